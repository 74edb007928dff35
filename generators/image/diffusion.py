"""Class-conditional DDPM for small grayscale images: the model, one training loop, its folder.

The model is a diffusers `UNet2DModel` with a class embedding: ids 0..C-1 are the classes and
id C means "no label". Training replaces each label by C with probability `label_dropout`, so
one network learns the conditional and the unconditional noise, and sampling can use
classifier-free guidance (Ho & Salimans, 2022; see `generators.image.sampler`).

The loop (`train`), top to bottom:

- data: every training image as one float tensor in [-1, 1] on the device. Step s draws its
  batch, timesteps, noise and label dropout from a generator seeded by (seed, s), so a resumed
  run draws exactly what an uninterrupted one would.
- step: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM, Ho et al., 2020); the network
  predicts eps; MSE loss (optionally Min-SNR-gamma weighted); AdamW with linear warmup then cosine
  decay to `min_lr_ratio`; gradients clipped to `grad_clip`; an EMA of the weights. Schedule,
  precision (bf16 autocast on CUDA, fp32 on CPU) and checkpoints follow the convention the LLM
  loop shares (`synth.train.conventions`).
- log: mean loss and seconds per step every `log_every` steps.
- checkpoint: every `checkpoint_every` steps, weights, EMA, optimiser and grad scaler go to
  `checkpoints/step-NNNNNNN/` (written aside, then renamed), tagged with a fingerprint of the
  config and the data; a run that finds a checkpoint of the same fingerprint resumes from it.
- save: the EMA weights as a diffusers folder, `model/unet/` + `model/scheduler/` +
  `model/synth_model.json` (class names, image size), loadable offline with `from_pretrained`.

The stage `diffusion` (`generators.image.diffusion_stage`) fits with this loop in one Ray task,
then samples (`generators.image.sampler`). Its folder is `OUTPUT/_models/<stage name>/`:
`model/`, `checkpoints/`, `data/train.parquet`, `data/holdout.parquet`, `train_log.jsonl`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from synth import io
from synth.errors import SpecError, SynthError
from synth.spec import StageConfig, StrictModel
from synth.stage import derive_seed
from synth.train.conventions import PrecisionName, load_checkpoint, precision_for, save_checkpoint, scheduled_lr

log = logging.getLogger(__name__)

MODEL_META = "synth_model.json"


def torch_threads(config: StageConfig) -> int:
    """The torch CPU threads of a stage: its `threads`, else its whole CPUs."""
    return config.threads or max(1, int(config.resources.num_cpus))


def torch_worker_env(threads: int) -> dict[str, str]:
    """For Ray workers running torch on several threads: idle OpenMP threads sleep, not spin.

    On 2 shared, busy cores, spinning made a 2-thread training step ten times slower (15 s
    against 1.6 s). A worker environment costs a fresh worker process, so one thread goes without.
    """
    return {"OMP_WAIT_POLICY": "PASSIVE"} if threads > 1 else {}


class DiffusionTrainParams(StrictModel):
    """How the `diffusion` stage trains (its `train:` section)."""

    steps: int = Field(1500, ge=1, description="Optimiser steps")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-3, gt=0, description="Peak AdamW learning rate")
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The cosine decays towards learning_rate * min_lr_ratio")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="Clip the gradient norm to this")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay; ramps up from 0.1 over the first steps")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="Chance a label is dropped (classifier-free guidance)")
    snr_gamma: float | None = Field(
        None, gt=0, description="Min-SNR-gamma loss weights, min(SNR_t, gamma) / SNR_t per sample (none: plain MSE)"
    )
    channels: list[int] = Field([32, 64, 64], min_length=1, description="UNet block_out_channels")
    layers_per_block: int = Field(1, ge=1)
    attention: bool = Field(False, description="Self-attention in the lowest-resolution blocks")
    train_timesteps: int = Field(1000, ge=10, description="DDPM noise levels")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="Rows kept out of training, for evaluation")
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(50, ge=1)
    precision: PrecisionName = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU (synth.train.conventions)")


# ---------------------------------------------------------------- the model and its folder


def build_unet(size: int, num_classes: int, cfg: DiffusionTrainParams):
    """A UNet2DModel for 1-channel `size` px images with `num_classes` + 1 class embeddings."""
    from diffusers import UNet2DModel

    levels = len(cfg.channels)
    if size % 2 ** (levels - 1):
        raise SynthError(f"image size {size} must be divisible by {2 ** (levels - 1)} for {levels} UNet levels")
    last = "AttnDownBlock2D" if cfg.attention else "DownBlock2D"
    return UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.layers_per_block, norm_num_groups=min(32, math.gcd(*cfg.channels)),
        down_block_types=("DownBlock2D",) * (levels - 1) + (last,),
        up_block_types=(last.replace("Down", "Up"),) + ("UpBlock2D",) * (levels - 1),
        num_class_embeds=num_classes + 1,
    )  # fmt: skip


def build_scheduler(cfg: DiffusionTrainParams):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type="epsilon", clip_sample=True)  # fmt: skip


@dataclass
class DiffusionModel:
    """A loaded model folder: the EMA UNet, the noise schedule's config and the class names."""

    unet: torch.nn.Module
    scheduler_config: dict
    classes: list[str]
    size: int
    model_id: str

    @property
    def null_class(self) -> int:
        return len(self.classes)


def save_model(folder: Path, unet: torch.nn.Module, scheduler, classes: list[str], size: int, meta: dict) -> None:
    """Write a diffusers-format folder aside, then rename it into place."""
    io.remove_temp_siblings(folder)
    tmp = io.temp_sibling(folder)
    unet.save_pretrained(tmp / "unet")
    scheduler.save_pretrained(tmp / "scheduler")
    io.write_json_atomic(tmp / MODEL_META, {"classes": classes, "image_size": size, **meta})
    io.commit_dir(tmp, folder)


def load_model(folder: Path, device: str = "cpu") -> DiffusionModel:
    """Load a folder written by `save_model` (offline: only local files are read)."""
    from diffusers import UNet2DModel

    folder = Path(folder)
    if not (folder / MODEL_META).is_file() or not (folder / "unet").is_dir():
        raise SynthError(f"{folder}: expected a model folder with unet/, scheduler/ and {MODEL_META}, "
                         "as the diffusion stage saves it")  # fmt: skip
    meta = io.read_json(folder / MODEL_META)
    unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True).to(device).eval()
    scheduler_config = io.read_json(folder / "scheduler" / "scheduler_config.json")
    model_id = f"unet-ddpm:{meta.get('fingerprint', 'unknown')[:12]}"
    return DiffusionModel(unet, scheduler_config, list(meta["classes"]), int(meta["image_size"]), model_id)


def load_classes(folder: Path, stage_kind: str, hint: str = "") -> list[str]:
    """The class names of a model folder, read without loading the model."""
    meta = Path(folder) / MODEL_META
    if not meta.is_file():
        raise SpecError(f"{stage_kind}: no model at {folder}: put a diffusion stage before this one and "
                        f"name it in `model:`{' ' + hint if hint else ''}")  # fmt: skip
    return list(io.read_json(meta)["classes"])


def model_root(output_dir: Path, stage_name: str) -> Path:
    """Where a training stage keeps its model, checkpoints and data split."""
    return Path(output_dir) / "_models" / stage_name


def split_paths(folder: Path) -> dict[str, Path]:
    """The training and held-out images of a model root (id, label, label_id as the model numbers it, image)."""
    return {"train": folder / "data" / "train.parquet", "holdout": folder / "data" / "holdout.parquet"}


# ---------------------------------------------------------------- the training loop


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate(step: int, cfg: DiffusionTrainParams) -> float:
    """The shared schedule (`synth.train.conventions.scheduled_lr`): linear warmup, then a cosine
    decay towards `min_lr_ratio` of the peak."""
    return scheduled_lr(cfg.learning_rate, step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                        min_ratio=cfg.min_lr_ratio)


@dataclass
class TrainResult:
    steps_run: int  # in this call (0 when a finished model was found)
    resumed_from: int
    seconds: float
    final_loss: float | None

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps_run if self.steps_run else None


FINGERPRINT_KIND = "diffusion_train"
"""The name the fingerprint gives the training fields: that of the stage the loop began in. Kept,
with `FIELDS_SINCE`, so that the same fields, seed and data give the same model id (the `model`
column of the images) as before training and sampling became one `diffusion` stage."""

FIELDS_SINCE = {"min_lr_ratio": 0.1}
"""Training fields added since, with the value the loop had before them: at that value a field
leaves the fingerprint as it was; set otherwise, it changes the weights and the fingerprint."""


def fingerprint(cfg: DiffusionTrainParams, seed: int, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    """What decides the trained weights: the training fields, the seed, the images and labels."""
    fields = cfg.model_dump(mode="json", exclude={"log_every"})
    for name, before in FIELDS_SINCE.items():
        if fields[name] == before:
            del fields[name]
    fields["kind"] = FINGERPRINT_KIND
    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    payload = json.dumps({"config": fields, "seed": seed, "data": digest.hexdigest(), "classes": classes}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def train(
    images: np.ndarray, labels: np.ndarray, classes: list[str], cfg: DiffusionTrainParams, folder: Path, seed: int,
    device: torch.device | None = None,
) -> TrainResult:
    """Train on (N, H, W) uint8 images with label ids in [0, C); save the model under `folder`/model."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = fingerprint(cfg, seed, images, labels, classes)
    if _finished(folder / "model", tag):
        log.info("diffusion: %s already holds the model of this config and data; not training again", folder)
        return TrainResult(0, cfg.steps, 0.0, None)
    device = device or pick_device(None)
    size = images.shape[1]
    torch.manual_seed(derive_seed(seed, "init"))
    unet = build_unet(size, len(classes), cfg).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = build_scheduler(cfg)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    precision = precision_for(device, cfg.precision, "diffusion")
    scaler = precision.grad_scaler()
    start = _resume(folder / "checkpoints", tag, unet, ema, optimizer, scaler, device)

    x0_all = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1).to(device)
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    abar = scheduler.alphas_cumprod.to(device)
    log.info("diffusion: %d images of %d px, %d classes, %.2fM parameters, steps %d..%d on %s",
             len(images), size, len(classes), sum(p.numel() for p in unet.parameters()) / 1e6,
             start, cfg.steps, device)  # fmt: skip
    unet.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(start, cfg.steps):
        # data: this step's noised batch, from the step's own seed
        x_t, t, y, noise = _noised_batch(x0_all, y_all, len(classes), abar, cfg, derive_seed(seed, "step", step))
        # step: predict the noise, AdamW with clipping, then the EMA
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        with precision.autocast():
            loss = _loss(unet(x_t, t, class_labels=y).sample.float(), noise, abar[t], cfg.snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        _ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        # log and checkpoint
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            _log_progress(folder, done, cfg.steps, losses[-cfg.log_every :], time.perf_counter() - started, done - start)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            state = {"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict()}  # fmt: skip
            save_checkpoint(folder / "checkpoints", done, state, tag)
    seconds = time.perf_counter() - started
    meta = {"fingerprint": tag, "steps": cfg.steps, "seconds_per_step": seconds / max(1, cfg.steps - start)}
    save_model(folder / "model", ema.to("cpu"), scheduler, classes, size, meta)
    return TrainResult(cfg.steps - start, start, seconds, float(np.mean(losses[-cfg.log_every :])) if losses else None)


def _loss(predicted: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """MSE on the noise; with `snr_gamma`, each sample's weighted by min(SNR, gamma) / SNR so the
    nearly clean timesteps (high SNR, easy) stop dominating the gradient (Hang et al., 2023)."""
    if snr_gamma is None:
        return F.mse_loss(predicted, noise)
    snr = abar_t / (1 - abar_t)
    weight = snr.clamp(max=snr_gamma) / snr
    return (weight * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def _noised_batch(
    x0_all: torch.Tensor, y_all: torch.Tensor, null_class: int, abar: torch.Tensor, cfg: DiffusionTrainParams, seed: int
) -> tuple[torch.Tensor, ...]:
    """(x_t, t, labels with some dropped to the null class, noise) for one step."""
    g = torch.Generator().manual_seed(seed)
    n, device = cfg.batch_size, x0_all.device
    index = torch.randint(len(x0_all), (n,), generator=g).to(device)
    noise = torch.randn((n, *x0_all.shape[1:]), generator=g).to(device)
    t = torch.randint(cfg.train_timesteps, (n,), generator=g).to(device)
    dropped = (torch.rand(n, generator=g) < cfg.label_dropout).to(device)
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0_all[index] + (1 - a).sqrt() * noise, t, torch.where(dropped, null_class, y_all[index]), noise


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def _log_progress(folder: Path, step: int, total: int, losses: list[float], seconds: float, steps_run: int) -> None:
    entry = {"step": step, "loss": round(float(np.mean(losses)), 5), "seconds_per_step": round(seconds / steps_run, 4)}
    log.info("diffusion: step %d/%d loss %.4f, %.3f s/step", step, total, entry["loss"], entry["seconds_per_step"])
    with open(folder / "train_log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def _resume(folder: Path, tag: str, unet, ema, optimizer, scaler, device: torch.device) -> int:
    """Load the newest checkpoint of the same config and data; returns the step to start from."""
    state = load_checkpoint(folder, tag, device)
    if state is None:
        return 0
    unet.load_state_dict(state["unet"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    log.info("diffusion: resuming from the checkpoint at step %d", state["step"])
    return int(state["step"])


def _finished(model_folder: Path, tag: str) -> bool:
    meta = model_folder / MODEL_META
    return meta.is_file() and io.read_json(meta).get("fingerprint") == tag
