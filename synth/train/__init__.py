"""The built-in training stage: fine-tune or pretrain a causal LM on a synth Parquet dataset.

`run_training(spec, data_dir)` serves `synth train SPEC` and a pipeline's `kind: train` stage. It
trains in this process (`resources.workers: 1`) or on Ray Train workers with DDP (more), with the
same loop (`synth.train.loop`). An output folder holds:

    OUTPUT/_train.json                     the spec and fingerprint being trained (guards resume)
    OUTPUT/checkpoints/step-NNNNNNN/       state.pt: weights, optimiser, scheduler, RNG, data position
    OUTPUT/metrics.jsonl, OUTPUT/loss.png  per-step metrics and the loss plot
    OUTPUT/summary.json                    first and last eval loss, last train loss
    OUTPUT/model/                          the trained Hugging Face folder; written last, marks the run done

Running a spec again resumes from its latest checkpoint; a finished run of the same spec and data
is returned as it is; a folder holding another spec's checkpoints or model is refused unless
`overwrite` (one that never reached a checkpoint is simply started over).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from synth.errors import OutputExistsError
from synth.train.spec import TrainError, TrainSpec, load_train_spec

__all__ = ["TrainError", "TrainSpec", "load_train_spec", "run_training"]

TRAIN_FILE = "_train.json"

log = logging.getLogger(__name__)


def run_training(spec: TrainSpec, data_dir: Path | None = None, *, overwrite: bool = False,
                 ray_address: str | None = None) -> Path:
    """Train as `spec` says on `data_dir` (a pipeline's OUTPUT/data) or `spec.data.path`; returns the model folder."""
    from synth.train.data import data_identity, parquet_files
    from synth.train.loop import RunPaths

    data_path = _data_path(spec, data_dir)
    files = parquet_files(data_path)
    output = Path(spec.output or _dataset_root(data_path) / "train").resolve()
    paths = RunPaths(output, files, spec.fingerprint(data_identity(files)))
    if _claim_output(paths, spec, overwrite):
        log.info("%s: already trained with this spec and data", paths.model)
        return paths.model
    if spec.resources.workers > 1:
        from synth.train.distributed import train_on_ray

        train_on_ray(spec, paths, ray_address)
    else:
        from synth.train.loop import Worker, device_for, train

        train(spec, paths, Worker(device_for(spec)))
    return paths.model


def _data_path(spec: TrainSpec, data_dir: Path | None) -> Path:
    given = spec.data.path
    if data_dir is not None and given is not None and Path(given).resolve() != Path(data_dir).resolve():
        raise TrainError(f"train.data.path ({spec.data.path}) must be left out in a pipeline: "
                         f"the train stage trains on the run's own data ({data_dir})")
    path = data_dir if data_dir is not None else spec.data.path
    if path is None:
        raise TrainError("data.path: required (a synth output folder or a folder of Parquet files)")
    return Path(path)


def _dataset_root(data_path: Path) -> Path:
    """The synth output folder a dataset belongs to (the parent of its data/), else the folder itself."""
    return data_path.parent if data_path.name == "data" and not (data_path / "data").is_dir() else data_path


def _claim_output(paths, spec: TrainSpec, overwrite: bool) -> bool:
    """Prepare the output folder; True when it already holds this very run, finished."""
    from synth import io

    output, marker = paths.output, paths.output / TRAIN_FILE
    ours = marker.exists()
    if output.exists() and any(output.iterdir()) and not ours:
        raise OutputExistsError(f"{output}: folder is not empty and is not a synth training run; choose another output")
    same = ours and io.read_json(marker).get("fingerprint") == paths.fingerprint
    if same and paths.model.is_dir() and not overwrite:
        return True
    if ours and (overwrite or not same):
        trained = paths.model.is_dir() or any(paths.checkpoints.glob("step-*"))
        if trained and not same and not overwrite:
            raise OutputExistsError(f"{output}: holds a training run of another spec or dataset; "
                                    "pass --overwrite to replace it or choose another output")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    io.remove_temp_siblings(paths.model)
    if paths.checkpoints.is_dir():
        for stale in paths.checkpoints.glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    io.write_json_atomic(marker, {"name": spec.name, "fingerprint": paths.fingerprint,
                                  "data": [str(f) for f in paths.data_files], "spec": spec.model_dump(mode="json")})
    return False
