"""Many workers: the same loop under Ray Train's `TorchTrainer`, with DDP across its processes.

Ray Train starts `resources.workers` processes (one GPU each with `use_gpu`, else
`cpus_per_worker` CPUs) and their torch process group; each runs `synth.train.loop.train` with
its rank. The loop reads the same sequences on every worker and keeps its slice of each step, so
the global batch, the loss curve and the checkpoints are those of one worker with the same
`batch_size`. Checkpoints and metrics go to the run's output folder, which every worker must see
(the local disk on one machine, shared storage on a cluster); rank 0 writes them.

Each `ray.train.report()` is a barrier that costs seconds (about 2.5 s in Ray 2.60), so the loop
reports only at checkpoints and at the end; per-step metrics go to `metrics.jsonl` instead.
"""

from __future__ import annotations

import logging

from synth.train.loop import RunPaths, Worker, train
from synth.train.spec import TrainError, TrainSpec

log = logging.getLogger(__name__)


def train_on_ray(spec: TrainSpec, paths: RunPaths, ray_address: str | None = None) -> None:
    """Run the loop on `spec.resources.workers` Ray Train workers; returns when training is done."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from synth.ray_session import init_ray

    init_ray(ray_address)
    res = spec.resources
    use_gpu = res.use_gpu if res.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= res.workers
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": spec, "paths": paths},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=spec.name, storage_path=str(paths.output / "_ray"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    log.info("training on %d Ray Train workers (%s)", res.workers, "GPU" if use_gpu else "CPU")
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _worker_error(exc) or exc from None


def _worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    worker = Worker(device=ray.train.torch.get_device(), rank=context.get_world_rank(),
                    world=context.get_world_size(), report=ray.train.report)
    if worker.leader:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(config["spec"], config["paths"], worker)


def _worker_error(exc: Exception) -> TrainError | None:
    """The TrainError a worker raised (bad data, say), so the user sees its message, not Ray's."""
    for failure in getattr(exc, "worker_failures", {}).values():
        cause = getattr(failure, "cause", failure)
        if isinstance(cause, TrainError):
            return TrainError(str(cause))
    return None
