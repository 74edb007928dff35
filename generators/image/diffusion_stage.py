"""`diffusion`: fit a class-conditional DDPM on labelled images in one task, then sample in blocks.

A fit-then-sample stage (`synth.stage.FitSampleStage`), the shape `tabular_synth` has too:

1. **Fit, in ONE task** (`fit`) with the stage's `resources`: every kept image of the stage
   before is split into train and held-out rows by a hash of its id (`train.holdout_fraction`),
   the split is written beside the model (for `image_memorisation` and `image_eval`), and the
   loop of `generators.image.diffusion` trains on the training rows (`train:`), resuming from
   its checkpoint or keeping a finished model of the same config and data.
2. **Sample, in blocks** (`plan`, `make`): `sample.images_per_class` images of each requested
   label, `sample.block_size` to a block, each block with its own seed, made on a pool of
   `resources.concurrency` Ray actors, each loading the model once (`generators.image.sampler`).
   The input rows are replaced by the samples; the label requested is stored with each image.

The fit and the sampling are seeded as the two stages they were before (`part_seed`), and the
images' `generator` column names this stage (`diffusion`; it read `diffusion_sample` then).
Its folder is `OUTPUT/_models/<stage name>/` (`model/`, `checkpoints/`, `data/`, `train_log.jsonl`).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from generators.image.diffusion import (
    DiffusionTrainParams,
    load_classes,
    load_model,
    model_root,
    pick_device,
    split_paths,
    torch_threads,
    torch_worker_env,
    train,
)
from generators.image.records import decode_many, make_record, to_table
from generators.image.sampler import DiffusionSampleParams, plan_blocks, sample
from synth import io
from synth.errors import SynthError
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FitSampleStage, StageContext, derive_seed, set_column

log = logging.getLogger(__name__)


class DiffusionConfig(StageConfig):
    kind: Literal["diffusion"] = "diffusion"
    train: DiffusionTrainParams = DiffusionTrainParams()
    sample: DiffusionSampleParams = DiffusionSampleParams()
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... to fit and sample on (default: cuda if there)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of the fit task and each sampling actor "
                                "(default: the stage's num_cpus)")  # fmt: skip


def part_seed(ctx: StageContext, part: str) -> int:
    """The seed of the fit (`train`) or the sampling (`sample`): that of a stage named
    `<stage name>_<part>`, derived from the run seed as every stage's is. With the default name
    these are the seeds of the `diffusion_train` and `diffusion_sample` stages that trained and
    sampled before they became this one, so a spec and seed make the same model and images."""
    return derive_seed(ctx.seed, f"{ctx.stage_name}_{part}")


def classes_of(table: pa.Table) -> tuple[list[str], int]:
    """The class names (ordered by label_id) and the one image size of an image table."""
    if table.num_rows == 0:
        raise SynthError("diffusion: got no images")
    sizes = sorted(set(zip(table.column("width").to_pylist(), table.column("height").to_pylist())))
    if len(sizes) > 1 or sizes[0][0] != sizes[0][1]:
        raise SynthError(f"diffusion: expected square images of one size, got sizes {sizes[:5]}; "
                         "set `size:` on the source stage to resize them")  # fmt: skip
    pairs = sorted(set(zip(table.column("label_id").to_pylist(), table.column("label").to_pylist())))
    for column in (0, 1):
        values = [p[column] for p in pairs]
        if len(set(values)) != len(values):
            raise SynthError(f"diffusion: labels and label ids do not match one to one: {pairs[:6]}")
    return [label for _, label in pairs], sizes[0][0]


def is_holdout(record_id: str, fraction: float) -> bool:
    """A fixed split by id: the same image is always on the same side, copies included."""
    return int(record_id[:8], 16) / 0xFFFFFFFF < fraction


def write_split(table: pa.Table, holdout: list[bool], folder) -> None:
    """The training and held-out images (id, label, label_id as the model numbers it, image)."""
    for name, path in split_paths(folder).items():
        mask = pa.array([h == (name == "holdout") for h in holdout])
        part = table.filter(mask).select(["id", "label", "label_id", "image"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = io.temp_sibling(path)
        pq.write_table(part, tmp)
        os.replace(tmp, path)


@register
class Diffusion(FitSampleStage):
    kind = "diffusion"
    Config = DiffusionConfig
    description = "Train a class-conditional DDPM UNet (diffusers format) on labelled images, then sample " \
                  "DDIM + classifier-free guidance on Ray actors"  # fmt: skip
    stateful = True
    model = None

    def worker_env(self) -> dict[str, str]:
        return torch_worker_env(torch_threads(self.config))

    def setup(self) -> None:
        # The fit task sets up too, before a model exists: the model loads with the first block.
        torch.set_num_threads(torch_threads(self.config))

    def fit(self, table: pa.Table) -> None:
        """The training loop is sequential: one task with every image; the model goes to the folder."""
        cfg, ctx = self.config, self.ctx
        classes, size = classes_of(table)
        folder = model_root(ctx.output_dir, ctx.stage_name)
        log.info("diffusion: training on all %d-px images in one task; classes %s; folder %s", size, classes, folder)
        index = {label: i for i, label in enumerate(classes)}
        label_ids = [index[label] for label in table.column("label").to_pylist()]
        table = set_column(table, "label_id", pa.array(label_ids, pa.int32()))
        holdout = [is_holdout(i, cfg.train.holdout_fraction) for i in table.column("id").to_pylist()]
        if all(holdout):
            raise SynthError(f"diffusion: train.holdout_fraction {cfg.train.holdout_fraction} left no training images")
        write_split(table, holdout, folder)
        train_rows = table.filter(pa.array([not h for h in holdout]))
        images = decode_many(train_rows.column("image").to_pylist())
        labels = np.asarray(train_rows.column("label_id").to_pylist())
        result = train(images, labels, classes, cfg.train, folder, part_seed(ctx, "train"),
                       pick_device(cfg.device))  # fmt: skip
        ctx.count(train_steps=result.steps_run, train_seconds=round(result.seconds, 3), train_images=len(images),
                  resumed_from_step=result.resumed_from)  # fmt: skip

    def plan(self) -> list[dict]:
        folder = model_root(self.ctx.output_dir, self.ctx.stage_name) / "model"
        blocks = plan_blocks(self.config.sample, load_classes(folder, self.kind), part_seed(self.ctx, "sample"))
        log.info("diffusion: %d blocks from %s on %d actor(s); the input rows are replaced by samples",
                 len(blocks), folder, self.config.resources.concurrency)  # fmt: skip
        return blocks

    def make(self, block: dict) -> pa.Table:
        if self.model is None:
            folder = model_root(self.ctx.output_dir, self.ctx.stage_name) / "model"
            self.model = load_model(folder, str(pick_device(self.config.device)))
        cfg = self.config.sample
        pixels = sample(self.model, [block["label_id"]] * block["count"], block["seed"], steps=cfg.steps,
                        guidance_scale=cfg.guidance_scale, eta=cfg.eta, clip_sample=cfg.clip_sample)  # fmt: skip
        method = f"ddim{cfg.steps}/cfg{cfg.guidance_scale:g}" + (f"/eta{cfg.eta:g}" if cfg.eta else "")
        rows = [make_record(image, label=block["label"], label_id=block["label_id"], generator=self.kind,
                            run_id=self.ctx.run_id, seed=derive_seed(block["seed"], i), model=self.model.model_id,
                            source=method)
                for i, image in enumerate(pixels)]  # fmt: skip
        self.ctx.count(sampled_images=len(rows))
        return to_table(rows)
