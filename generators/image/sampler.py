"""Conditional sampling from a trained diffusion model: DDIM with classifier-free guidance.

diffusers' `DDIMPipeline` passes no class labels, so the loop is ours (Song et al., 2021; Ho &
Salimans, 2022). For a block of requested labels y:

    x_T ~ N(0, I) from the block's seed
    for t in the DDIM timesteps (`steps` of the training schedule's noise levels):
        eps = eps(x_t, t, null) + w * (eps(x_t, t, y) - eps(x_t, t, null))   # one batched call
        x_{t-1} = DDIM step (eta, clip_sample: the predicted x_0 is clipped to [-1, 1])

with w the `guidance_scale` (w = 1: plain conditional sampling, one call per step).

The `diffusion` stage (`generators.image.diffusion_stage`) samples `images_per_class` for each
requested label, in blocks of `block_size` images, each block with its own seed
`derive_seed(stage_seed, label, block)` (`plan_blocks`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import Field

from generators.image.diffusion import DiffusionModel
from synth.errors import SpecError
from synth.spec import StrictModel
from synth.stage import derive_seed

log = logging.getLogger(__name__)


class DiffusionSampleParams(StrictModel):
    """How the `diffusion` stage samples (its `sample:` section)."""

    labels: list[str] | None = Field(None, description="Labels to sample (default: every class of the model)")
    images_per_class: int = Field(64, ge=1)
    steps: int = Field(25, ge=1, description="DDIM steps")
    guidance_scale: float = Field(3.0, ge=0, description="Classifier-free guidance weight; 1 = none")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM noise: 0 deterministic, 1 DDPM-like")
    clip_sample: bool = Field(True, description="Clip the predicted clean image to [-1, 1] each step")
    block_size: int = Field(32, ge=1, description="Images per block (one seed, one batched loop)")


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


def plan_blocks(config: DiffusionSampleParams, classes: list[str], stage_seed: int) -> list[dict]:
    """One row per block: label, label id, image count and seed."""
    labels = config.labels or classes
    unknown = [x for x in labels if x not in classes]
    if unknown:
        raise SpecError(f"diffusion: sample.labels: unknown label {unknown[0]!r}; "
                        f"the model knows: {', '.join(classes)}")
    blocks = []
    for label in labels:
        for block, start in enumerate(range(0, config.images_per_class, config.block_size)):
            blocks.append({"label": label, "label_id": classes.index(label), "block": block,
                           "count": min(config.block_size, config.images_per_class - start),
                           "seed": derive_seed(stage_seed, label, block)})  # fmt: skip
    return blocks
