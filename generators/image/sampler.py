"""Conditional sampling from a `diffusion_train` model: DDIM with classifier-free guidance.

diffusers' `DDIMPipeline` passes no class labels, so the loop is ours (Song et al., 2021; Ho &
Salimans, 2022). For a block of requested labels y:

    x_T ~ N(0, I) from the block's seed
    for t in the DDIM timesteps (`steps` of the training schedule's noise levels):
        eps = eps(x_t, t, null) + w * (eps(x_t, t, y) - eps(x_t, t, null))   # one batched call
        x_{t-1} = DDIM step (eta, clip_sample: the predicted x_0 is clipped to [-1, 1])

with w the `guidance_scale` (w = 1: plain conditional sampling, one call per step).

The stage `diffusion_sample` replaces its input rows with samples: `images_per_class` for each
requested label, in blocks of `block_size` images, each block with its own seed
`derive_seed(stage_seed, label, block)`. It is a block plan: the runner makes the blocks in parallel
on a pool of Ray actors, each loading the model once (`setup`); the label requested is stored
with each image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from generators.image.diffusion import (
    DiffusionModel,
    load_classes,
    load_model,
    model_root,
    pick_device,
    torch_threads,
    torch_worker_env,
)
from generators.image.records import make_record, to_table
from synth.errors import SpecError
from synth.registry import register
from synth.spec import InputFolder, StageConfig
from synth.stage import BlockStage, derive_seed

log = logging.getLogger(__name__)


class DiffusionSampleConfig(StageConfig):
    kind: Literal["diffusion_sample"] = "diffusion_sample"
    model: str = Field("diffusion_train", description="Name of the diffusion_train stage of this run")
    model_dir: InputFolder | None = Field(None, description="A model folder diffusion_train saved elsewhere (overrides model)")
    labels: list[str] | None = Field(None, description="Labels to sample (default: every class of the model)")
    images_per_class: int = Field(64, ge=1)
    steps: int = Field(25, ge=1, description="DDIM steps")
    guidance_scale: float = Field(3.0, ge=0, description="Classifier-free guidance weight; 1 = none")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM noise: 0 deterministic, 1 DDPM-like")
    clip_sample: bool = Field(True, description="Clip the predicted clean image to [-1, 1] each step")
    block_size: int = Field(32, ge=1, description="Images per block (one seed, one batched loop)")
    device: str | None = Field(None, description="cpu, cuda ... (default: cuda if present)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per actor (default: its num_cpus)")


@torch.no_grad()
def sample(
    model: DiffusionModel, label_ids: list[int], seed: int, *, steps: int = 25, guidance_scale: float = 3.0,
    eta: float = 0.0, clip_sample: bool = True,
) -> np.ndarray:  # fmt: skip
    """(N, H, W) uint8 images, one per requested label id, the same for the same seed."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config, clip_sample=clip_sample)
    scheduler.set_timesteps(steps)
    device = next(model.unet.parameters()).device
    g = torch.Generator().manual_seed(seed)
    n, size = len(label_ids), model.size
    x = torch.randn((n, 1, size, size), generator=g).to(device)
    y = torch.tensor(label_ids, device=device)
    guided = guidance_scale != 1.0
    labels = torch.cat([y, torch.full_like(y, model.null_class)]) if guided else y
    for t in scheduler.timesteps:
        inp = torch.cat([x, x]) if guided else x
        eps = model.unet(inp, t.to(device), class_labels=labels).sample.float()
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(eps, t, x, eta=eta, generator=g if eta > 0 else None).prev_sample
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels[:, 0].cpu().numpy()


def resolve_model_dir(config: DiffusionSampleConfig, output_dir: Path) -> Path:
    """The model folder a spec names: `model_dir`, else the named training stage's folder."""
    if config.model_dir is not None:
        return config.model_dir
    return model_root(output_dir, config.model) / "model"


def plan_blocks(config: DiffusionSampleConfig, classes: list[str], stage_seed: int) -> list[dict]:
    """One row per block: label, label id, image count and seed."""
    labels = config.labels or classes
    unknown = [x for x in labels if x not in classes]
    if unknown:
        raise SpecError(f"diffusion_sample: unknown label {unknown[0]!r}; the model knows: {', '.join(classes)}")
    blocks = []
    for label in labels:
        for block, start in enumerate(range(0, config.images_per_class, config.block_size)):
            blocks.append({"label": label, "label_id": classes.index(label), "block": block,
                           "count": min(config.block_size, config.images_per_class - start),
                           "seed": derive_seed(stage_seed, label, block)})  # fmt: skip
    return blocks


@register
class DiffusionSample(BlockStage):
    kind = "diffusion_sample"
    Config = DiffusionSampleConfig
    description = "Sample labelled images from a diffusion_train model: DDIM + classifier-free guidance, on Ray actors"
    stateful = True

    def plan(self) -> list[dict]:
        folder = resolve_model_dir(self.config, self.ctx.output_dir)
        classes = load_classes(folder, self.kind, hint="or set `model_dir:` to a folder it saved")
        blocks = plan_blocks(self.config, classes, self.ctx.stage_seed)
        log.info("diffusion_sample: %d blocks from %s on %d actor(s); the input rows are replaced by samples",
                 len(blocks), folder, self.config.resources.concurrency)  # fmt: skip
        return blocks

    def worker_env(self) -> dict[str, str]:
        return torch_worker_env(torch_threads(self.config))

    def setup(self) -> None:
        """Load the model once per actor."""
        torch.set_num_threads(torch_threads(self.config))
        folder = resolve_model_dir(self.config, self.ctx.output_dir)
        self.model = load_model(folder, str(pick_device(self.config.device)))
        cfg = self.config
        self.source_label = f"ddim{cfg.steps}/cfg{cfg.guidance_scale:g}" + (f"/eta{cfg.eta:g}" if cfg.eta else "")

    def make(self, block: dict) -> pa.Table:
        cfg = self.config
        pixels = sample(self.model, [block["label_id"]] * block["count"], block["seed"], steps=cfg.steps,
                        guidance_scale=cfg.guidance_scale, eta=cfg.eta, clip_sample=cfg.clip_sample)  # fmt: skip
        rows = [make_record(image, label=block["label"], label_id=block["label_id"], generator="diffusion_sample",
                            run_id=self.ctx.run_id, seed=derive_seed(block["seed"], i), model=self.model.model_id,
                            source=self.source_label)
                for i, image in enumerate(pixels)]  # fmt: skip
        self.ctx.count(sampled_images=len(rows))
        return to_table(rows)
