"""TabDDPM settings compared without the bench's holdout: inner validation on a training split.

`bench/tabular.py` scores every synthesizer on the holdout; choosing a setting by those numbers
would tune on the test split. This script reads only the bench's training split of a table (the
same split, from the same seed) and splits it again 80/20, `--splits` ways. Each setting fits on
the inner training rows, samples as many rows with the stage's privacy guard, `--draws` times,
and is scored on the inner validation rows: TSTR (macro F1 or R²), the synthetic rows' median
DCR over the validation rows' median DCR (above 1: farther from the training rows than real
unseen rows), and SDMetrics quality (first draw of each split).

A setting is `name` or `KEY=VALUE[+KEY=VALUE...]` of TabDDPM's parameters (values read as YAML);
`base` is the defaults.

    .venv/bin/python bench/tabular_inner.py wine base num_timesteps=1000 num_timesteps=100
    .venv/bin/python bench/tabular_inner.py penguins base epochs=300 --splits 3 --draws 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tabular import GUARD, MIXED, mixed_frame, split_table  # noqa: E402
from generators.tabular.constraints import Checker, sample_valid  # noqa: E402
from generators.tabular.data import TableSource, restore_types, split_holdout, to_frame  # noqa: E402
from generators.tabular.evaluate import distances_to_closest_record, ml_utility, quality_report  # noqa: E402
from generators.tabular.guard import NearCopyGuard  # noqa: E402
from generators.tabular.tabddpm import TabDDPM, TabDDPMParams  # noqa: E402
from synth.stage import derive_seed  # noqa: E402


def parse_setting(text: str) -> dict:
    if text == "base":
        return {}
    pairs = (part.partition("=") for part in text.split("+"))
    return {key: yaml.safe_load(value) for key, _, value in pairs}


def training_split(name: str, seed: int, folder: Path):
    """The bench's training split of `name` (its holdout is dropped here, never read), the
    table's metadata and learned schema."""
    if name in MIXED:
        path = folder / f"{name}.parquet"
        mixed_frame(name).to_parquet(path, index=False)
        source, target = TableSource(path=path), MIXED[name]
    else:
        source, target = TableSource(sklearn=name), "target"
    train, _, meta, learned = split_table(name, source, target, seed)
    return train, meta, learned


def score(setting: dict, outer, meta, learned, splits: int, draws: int) -> dict:
    tstr, ratio, quality, seconds = [], [], [], 0.0
    for k in range(splits):
        inner, valid = split_holdout(len(outer), 0.2, derive_seed(1000 + k, "inner"))
        train, valid = outer.iloc[inner].reset_index(drop=True), outer.iloc[valid].reset_index(drop=True)
        model = TabDDPM(TabDDPMParams(device="cpu", **setting))
        started = time.perf_counter()
        model.fit(train, meta, [], derive_seed(k, "fit"))
        seconds += time.perf_counter() - started
        guard = NearCopyGuard(train, meta, GUARD)
        for draw in range(draws):
            synthetic, _ = sample_valid(model, len(train), derive_seed(k, "sample", draw), {}, Checker([], train), 20,
                                        lambda f: to_frame(restore_types(f, learned)), guard)  # fmt: skip
            tstr.append(ml_utility(train, valid, synthetic, meta, 0)["tstr"])
            (dcr, _), (valid_dcr, _) = distances_to_closest_record(train, valid, synthetic, meta)
            ratio.append(float(np.median(dcr) / np.median(valid_dcr)))
            if draw == 0:
                quality.append(quality_report(train, synthetic, meta)[0]["score"])
    return {"steps": model.training_steps(len(train)), "tstr": tstr, "ratio": ratio, "quality": quality,
            "fit s": seconds / splits}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["breast_cancer", "wine", "diabetes", "iris", *MIXED])
    parser.add_argument("settings", nargs="+", help="base, or KEY=VALUE[+KEY=VALUE...] of TabDDPM's parameters")
    parser.add_argument("--splits", type=int, default=3, help="80/20 inner splits of the training rows")
    parser.add_argument("--draws", type=int, default=2, help="Samples scored per fit")
    parser.add_argument("--seed", type=int, default=0, help="The bench's seed (which training split)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as folder:
        outer, meta, learned = training_split(args.table, args.seed, Path(folder))
    for text in args.settings:
        r = score(parse_setting(text), outer, meta, learned, args.splits, args.draws)
        print(f"{args.table} {text}: {r['steps']} steps, TSTR {np.mean(r['tstr']):.3f} (sd {np.std(r['tstr']):.3f}, "
              f"min {min(r['tstr']):.3f}), DCR / validation DCR {np.mean(r['ratio']):.3f} (min {min(r['ratio']):.3f}), "
              f"quality {np.mean(r['quality']):.3f}, fit {r['fit s']:.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
