"""Tabular synthesizers side by side: GaussianCopula, CTGAN, TVAE (SDV) and our TabDDPM.

For each table (scikit-learn's breast_cancer, wine and diabetes, plus any CSV or Parquet given
as `PATH[:TARGET]`), every synthesizer gets the same training split, holdout and seeds (drawn
as the `tabular_synth` stage draws them), fits with its default settings (CTGAN and TVAE: 300
epochs), samples as many rows as the training split has, and is scored on the holdout:

    fit s, sample s, quality (SDMetrics), TSTR (macro F1 or R²) beside TRTR, median DCR beside
    the holdout's, exact copies.

    .venv/bin/python bench/tabular.py                      # the three sets, all four models
    .venv/bin/python bench/tabular.py my.csv:label --sets  # only a CSV, its target `label`
    .venv/bin/python bench/tabular.py --models tabddpm ctgan --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.tabular.data import MetadataOverrides, TableSource, infer_metadata, load_table, split_holdout, to_frame  # noqa: E402
from generators.tabular.evaluate import evaluate  # noqa: E402
from generators.tabular.synthesizers import make_synthesizer, parse_params  # noqa: E402
from synth.stage import derive_seed  # noqa: E402

MODELS = ("gaussian_copula", "ctgan", "tvae", "tabddpm")
SETS = ("breast_cancer", "wine", "diabetes")
COLUMNS = ("table", "model", "fit s", "sample s", "quality", "TSTR", "TRTR", "metric", "DCR", "holdout DCR", "copies")


def sources(args) -> list[tuple[str, TableSource, str | None]]:
    """(label, source, target) for each table to run."""
    out = [(name, TableSource(sklearn=name), "target") for name in args.sets]
    for item in args.tables:
        path, _, target = item.partition(":")
        out.append((Path(path).stem, TableSource(path=Path(path).resolve()), target or None))
    return out


def run_one(label: str, source: TableSource, target: str | None, model: str, seed: int) -> dict:
    frame = to_frame(load_table(source))
    meta = infer_metadata(frame, MetadataOverrides(target=target), label)
    train_rows, holdout_rows = split_holdout(len(frame), 0.2, derive_seed(seed, "holdout"))
    train, holdout = (frame.iloc[rows].reset_index(drop=True) for rows in (train_rows, holdout_rows))
    synthesizer = make_synthesizer(parse_params({"model": model}))
    started = time.perf_counter()
    synthesizer.fit(train, meta, [], derive_seed(seed, "fit"))
    fitted = time.perf_counter()
    synthetic = synthesizer.sample(len(train), derive_seed(seed, "sample"))
    sampled = time.perf_counter()
    result = evaluate(train, holdout, synthetic, meta, seed).summary()
    utility, privacy = result["utility"] or {}, result["privacy"]
    return {
        "table": label, "model": model, "fit s": fitted - started, "sample s": sampled - fitted,
        "quality": result["quality"]["score"], "TSTR": utility.get("tstr"), "TRTR": utility.get("trtr"),
        "metric": utility.get("metric", "-"), "DCR": privacy["dcr_median"],
        "holdout DCR": privacy.get("holdout_dcr_median"), "copies": privacy["exact_copy_rate"],
    }  # fmt: skip


def cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_row(row: dict) -> None:
    print("| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |", flush=True)


def verdict(rows: list[dict]) -> list[str]:
    """Per table: does TabDDPM beat every SDV model on TSTR and quality, and fit within CTGAN's time?"""
    lines = []
    for table in dict.fromkeys(r["table"] for r in rows):
        by_model = {r["model"]: r for r in rows if r["table"] == table}
        ours = by_model.get("tabddpm")
        others = [r for m, r in by_model.items() if m != "tabddpm"]
        if not ours or not others:
            continue
        tstr = ours["TSTR"] is None or all(ours["TSTR"] > r["TSTR"] for r in others)
        quality = all(ours["quality"] > r["quality"] for r in others)
        faster = "ctgan" not in by_model or ours["fit s"] <= by_model["ctgan"]["fit s"]
        yes = {True: "yes", False: "NO"}
        lines.append(f"{table}: TabDDPM best TSTR {yes[tstr]}, best quality {yes[quality]}, "
                     f"fit within CTGAN's time {yes[faster]}")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", help="CSV or Parquet files, PATH or PATH:TARGET")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=["breast_cancer", "wine", "diabetes", "iris"])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every model")
    parser.add_argument("--json", type=Path, help="Also write the rows here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    rows = []
    for label, source, target in sources(args):
        for model in args.models:
            rows.append(run_one(label, source, target, model, args.seed))
            print_row(rows[-1])
    print()
    print("\n".join(verdict(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
