"""Benchmark the image pipeline end to end and print its numbers side by side.

Runs a pipeline spec (default `pipelines/image.yaml`) into a fresh output folder, then prints
training seconds per step, sampled images per second, FID of our samples, of the class-mean
baseline and of real vs real (the floor) against held-out real images (Inception and domain
features), label agreement, the drops per filter, and whether the goals are met: our FID far below
the baseline's (under half) and label agreement at least 0.95.

    python bench/image.py [--spec pipelines/image.yaml] [--output /tmp/synth-bench-image] [--json out.json]
                          [--train-steps N] [--no-inception]

A killed bench resumes where it stopped (training from its last checkpoint) when run again with
the same output folder and `--resume`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import filters.quality.image_checks  # noqa: F401 - registers the image stages
import generators.image.evaluate
import generators.image.folder
import generators.image.phantoms
import generators.image.diffusion_stage  # noqa: F401
from synth.runner import run
from synth.run_spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def stage_of(manifest: dict, kind: str) -> dict:
    return next(s for s in manifest["stages"] if s["kind"] == kind)


def numbers(output: Path, manifest: dict, wall: float) -> dict:
    diffusion = stage_of(manifest, "diffusion")
    evaluation = stage_of(manifest, "image_eval")
    metrics = json.loads((output / "_reports" / evaluation["name"] / "metrics.json").read_text())
    counters = diffusion["counters"]
    steps = counters.get("train_steps", 0)
    # The stage fits then samples: its time less the training loop's is sampling (with the
    # data split and the actor's start).
    sample_seconds = round(diffusion["seconds"] - counters.get("train_seconds", 0), 3)
    return {
        "pipeline_seconds": round(wall, 1),
        "train_seconds_per_step": round(counters["train_seconds"] / steps, 4) if steps else None,
        "train_steps_this_run": steps,
        "sample_images_per_second": round(diffusion["kept"] / sample_seconds, 3),
        "sample_seconds": sample_seconds,
        "fid_inception": metrics.get("fid_inception"),
        "fid_domain": metrics["fid_domain"],
        "label_agreement": metrics["label_agreement"],
        "label_agreement_per_class": metrics["label_agreement_per_class"],
        "images": metrics["images"],
        "drops": manifest["drops"],
        "records": manifest["records"],
    }


def report(n: dict) -> str:
    lines = [
        f"pipeline: {n['pipeline_seconds']} s, {n['records']} records; drops {n['drops'] or 'none'}",
        f"train: {n['train_seconds_per_step']} s/step ({n['train_steps_this_run']} steps in this run)",
        f"sample: {n['sample_images_per_second']} images/s ({n['sample_seconds']} s with actor start)",
        f"FID against {n['images']['per_fid_set']} held-out real images per set:",
        f"  {'features':<22}{'ours':>10}{'baseline':>10}{'real-real':>10}",
    ]
    for key, title in (("fid_inception", "Inception 2048-d"), ("fid_domain", "domain classifier")):
        if n[key]:
            lines.append(f"  {title:<22}{n[key]['ours']:>10.2f}{n[key]['baseline']:>10.2f}{n[key]['real']:>10.2f}")
    agree = n["label_agreement"]
    lines.append(f"label agreement: ours {agree['ours']:.3f}, baseline {agree['baseline']:.3f}, "
                 f"classifier on held-out real {agree['real_holdout']:.3f}; per class {n['label_agreement_per_class']}")  # fmt: skip
    fid = n["fid_inception"] or n["fid_domain"]
    goals = {"FID under half the baseline's": fid["ours"] < fid["baseline"] / 2,
             "label agreement >= 0.95": agree["ours"] >= 0.95}  # fmt: skip
    lines.append("goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    return "\n".join(lines)


def _adjusted(stage, args: argparse.Namespace):
    """The spec's stage with the command line's changes."""
    if stage.kind == "diffusion" and args.train_steps:
        return stage.model_copy(update={"train": stage.train.model_copy(update={"steps": args.train_steps})})
    if stage.kind == "image_eval" and args.no_inception:
        return stage.model_copy(update={"inception": False})
    return stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "pipelines" / "image.yaml"))
    parser.add_argument("--output", default="/tmp/synth-bench-image")
    parser.add_argument("--resume", action="store_true", help="Continue an unfinished run in --output")
    parser.add_argument("--json", help="Also write the numbers here")
    parser.add_argument("--train-steps", type=int, help="Train this many steps instead of the spec's (a short lease)")
    parser.add_argument("--no-inception", action="store_true", help="Skip Inception FID (where its weights are missing)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = load_spec(args.spec, overrides={"output": args.output})
    spec = spec.model_copy(update={"stages": [_adjusted(s, args) for s in spec.stages]})
    started = time.perf_counter()
    result = run(spec, overwrite=not args.resume)
    n = numbers(result.output, result.manifest.to_json(), time.perf_counter() - started)
    print(report(n))
    if args.json:
        Path(args.json).write_text(json.dumps(n, indent=2) + "\n")


if __name__ == "__main__":
    main()
