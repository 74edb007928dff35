"""The image pipeline end to end at tiny sizes: phantoms -> fit and sample -> filters -> report,
and a rerun after a crash reuses the trained model instead of training again."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import yaml

import filters.quality.image_checks  # noqa: F401 - registers the image stages
import generators.image.evaluate
import generators.image.phantoms
import generators.image.diffusion_stage  # noqa: F401
from synth.runner import run
from synth.run_spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    {"kind": "phantom_images", "count": 36, "size": 16},
    {"kind": "diffusion", "resources": {"num_cpus": 1},
     "train": {"steps": 3, "batch_size": 4, "channels": [16, 32], "warmup_steps": 1, "holdout_fraction": 0.25},
     "sample": {"labels": ["normal", "dark_lesion"], "images_per_class": 3, "steps": 2, "block_size": 2}},
    {"kind": "image_checks"},
    {"kind": "image_phash_dedup"},
    {"kind": "image_memorisation", "resources": {"num_cpus": 0.5}},
    {"kind": "image_eval", "inception": False, "classifier_steps": 3, "fid_images": 4, "grid_per_class": 2,
     "resources": {"num_cpus": 1}},
]  # fmt: skip


def test_tiny_pipeline_writes_labelled_samples_and_a_report(ray_session, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "image", "seed": 1, "output": str(tmp_path / "out"), "stages": TINY}))
    spec = load_spec(path)
    result = run(spec)
    table = pads.dataset(str(result.output / "data"), format="parquet").to_table()
    kept = table.to_pylist()
    assert {r["label"] for r in kept} <= {"normal", "dark_lesion"} and len(kept) >= 1
    assert {(r["label"], r["label_id"]) for r in kept} <= {("normal", 0), ("dark_lesion", 2)}
    assert all(r["generator"] == "diffusion" and r["model"].startswith("unet-ddpm:") for r in kept)
    for column in ("pixel_std", "phash", "memorisation_ratio", "nearest_real_id", "predicted_label"):
        assert column in table.column_names
    drops = sum(n for stage in result.manifest.drops.values() for n in stage.values())
    assert len(kept) + drops == 6  # every sample is kept or counted under a reason

    report = result.output / "_reports" / "image_eval"
    assert "| FID, domain classifier (128-d) |" in (report / "report.md").read_text()
    assert (report / "samples.png").stat().st_size > 0 and (report / "real.png").stat().st_size > 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["fid_domain"]) == {"ours", "baseline", "real"}
    assert result.manifest.stages[1].counters["train_steps"] == 3

    # killed after the model was saved but before the stage was committed: the rerun reuses the model
    (result.output / "_manifest.json").unlink()
    (sorted((result.output / "_stages").iterdir())[1] / "_SUCCESS.json").unlink()
    again = run(spec)
    assert [s.resumed for s in again.stages] == [True, False, True, True, True, True]
    assert again.manifest.stages[1].counters["train_steps"] == 0


def test_shipped_pipelines_are_valid():
    for name in ("image.yaml", "image_gpu.yaml"):
        spec = load_spec(ROOT / "pipelines" / name)
        assert [s.kind for s in spec.stages][:2] == ["phantom_images", "diffusion"]
