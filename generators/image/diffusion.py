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
  predicts eps; MSE loss (optionally Min-SNR-gamma weighted); AdamW with linear warmup then cosine decay to 10%; gradients clipped
  to `grad_clip`; an EMA of the weights. bf16 autocast on CUDA (fp16 with a grad scaler where
  bf16 is missing), fp32 on CPU.
- log: mean loss and seconds per step every `log_every` steps.
- checkpoint: every `checkpoint_every` steps, weights, EMA, optimiser and step go to
  `checkpoints/last.pt` (written aside, then renamed), tagged with a fingerprint of the config
  and the data; a run that finds a matching checkpoint resumes from it.
- save: the EMA weights as a diffusers folder, `model/unet/` + `model/scheduler/` +
  `model/synth_model.json` (class names, image size), loadable offline with `from_pretrained`.

The stage `diffusion_train` gathers its input into ONE Ray task (the loop is sequential and
holds the model), splits it into train and held-out rows by a hash of each id, trains, and
passes its input on with a `split` column. Its folder is `OUTPUT/_models/<stage name>/`:
`model/`, `checkpoints/`, `data/train.parquet`, `data/holdout.parquet`, `train_log.jsonl`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import Field

from generators.image.records import decode_many
from synth import io
from synth.errors import SpecError, SynthError
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import StageContext, TableStage, derive_seed, set_column

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


class DiffusionTrainConfig(StageConfig):
    kind: Literal["diffusion_train"] = "diffusion_train"
    steps: int = Field(1500, ge=1, description="Optimiser steps")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-3, gt=0, description="Peak AdamW learning rate")
    warmup_steps: int = Field(100, ge=0)
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... (default: cuda if present)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: the stage's num_cpus)")


# ---------------------------------------------------------------- the model and its folder


def build_unet(size: int, num_classes: int, cfg: DiffusionTrainConfig):
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


def build_scheduler(cfg: DiffusionTrainConfig):
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
                         "as diffusion_train saves it")  # fmt: skip
    meta = io.read_json(folder / MODEL_META)
    unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True).to(device).eval()
    scheduler_config = io.read_json(folder / "scheduler" / "scheduler_config.json")
    model_id = f"unet-ddpm:{meta.get('fingerprint', 'unknown')[:12]}"
    return DiffusionModel(unet, scheduler_config, list(meta["classes"]), int(meta["image_size"]), model_id)


def load_classes(folder: Path, stage_kind: str, hint: str = "") -> list[str]:
    """The class names of a model folder, read without loading the model."""
    meta = Path(folder) / MODEL_META
    if not meta.is_file():
        raise SpecError(f"{stage_kind}: no model at {folder}: put a diffusion_train stage before this one and "
                        f"name it in `model:`{' ' + hint if hint else ''}")  # fmt: skip
    return list(io.read_json(meta)["classes"])


def model_root(output_dir: Path, stage_name: str) -> Path:
    """Where a training stage keeps its model, checkpoints and data split."""
    return Path(output_dir) / "_models" / stage_name


# ---------------------------------------------------------------- the training loop


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device, precision: str) -> tuple[contextlib.AbstractContextManager, bool]:
    """The autocast context for a step, and whether fp16 needs a grad scaler."""
    if device.type != "cuda" or precision == "fp32":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            log.warning("diffusion_train: %s autocast needs CUDA; training in fp32 on %s", precision, device)
        return contextlib.nullcontext(), False
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), precision == "fp16"


def learning_rate(step: int, cfg: DiffusionTrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak at the last step."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class TrainResult:
    steps_run: int  # in this call (0 when a finished model was found)
    resumed_from: int
    seconds: float
    final_loss: float | None

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps_run if self.steps_run else None


def fingerprint(cfg: DiffusionTrainConfig, seed: int, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    """What decides the trained weights: the training fields, the seed, the images and labels."""
    fields = cfg.model_dump(mode="json", exclude={"name", "resources", "device", "threads", "log_every"})
    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    payload = json.dumps({"config": fields, "seed": seed, "data": digest.hexdigest(), "classes": classes}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def train(
    images: np.ndarray, labels: np.ndarray, classes: list[str], cfg: DiffusionTrainConfig, folder: Path, seed: int
) -> TrainResult:
    """Train on (N, H, W) uint8 images with label ids in [0, C); save the model under `folder`/model."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = fingerprint(cfg, seed, images, labels, classes)
    if _finished(folder / "model", tag):
        log.info("diffusion_train: %s already holds the model of this config and data; not training again", folder)
        return TrainResult(0, cfg.steps, 0.0, None)
    device = pick_device(cfg.device)
    size = images.shape[1]
    torch.manual_seed(derive_seed(seed, "init"))
    unet = build_unet(size, len(classes), cfg).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = build_scheduler(cfg)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    autocast, needs_scaler = _autocast(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler)
    start = _resume(folder / "checkpoints" / "last.pt", tag, unet, ema, optimizer, scaler, device)

    x0_all = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1).to(device)
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    abar = scheduler.alphas_cumprod.to(device)
    log.info("diffusion_train: %d images of %d px, %d classes, %.2fM parameters, steps %d..%d on %s",
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
        with autocast:
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
            _checkpoint(folder / "checkpoints" / "last.pt", tag, done, unet, ema, optimizer, scaler)
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
    x0_all: torch.Tensor, y_all: torch.Tensor, null_class: int, abar: torch.Tensor, cfg: DiffusionTrainConfig, seed: int
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
    log.info("diffusion_train: step %d/%d loss %.4f, %.3f s/step", step, total, entry["loss"], entry["seconds_per_step"])
    with open(folder / "train_log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def _checkpoint(path: Path, tag: str, step: int, unet, ema, optimizer, scaler) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = io.temp_sibling(path)
    state = {"fingerprint": tag, "step": step, "unet": unet.state_dict(), "ema": ema.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}  # fmt: skip
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(path: Path, tag: str, unet, ema, optimizer, scaler, device: torch.device) -> int:
    """Load a checkpoint of the same config and data; returns the step to start from."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device, weights_only=True)
    if state["fingerprint"] != tag:
        log.warning("diffusion_train: %s is from another config or data set; training from scratch", path)
        return 0
    unet.load_state_dict(state["unet"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    log.info("diffusion_train: resuming from the checkpoint at step %d", state["step"])
    return int(state["step"])


def _finished(model_folder: Path, tag: str) -> bool:
    meta = model_folder / MODEL_META
    return meta.is_file() and io.read_json(meta).get("fingerprint") == tag


# ---------------------------------------------------------------- the stage


def classes_of(table: pa.Table) -> tuple[list[str], int]:
    """The class names (ordered by label_id) and the one image size of an image table."""
    if table.num_rows == 0:
        raise SynthError("diffusion_train: got no images")
    sizes = sorted(set(zip(table.column("width").to_pylist(), table.column("height").to_pylist())))
    if len(sizes) > 1 or sizes[0][0] != sizes[0][1]:
        raise SynthError(f"diffusion_train: expected square images of one size, got sizes {sizes[:5]}; "
                         "set `size:` on the source stage to resize them")  # fmt: skip
    pairs = sorted(set(zip(table.column("label_id").to_pylist(), table.column("label").to_pylist())))
    for column in (0, 1):
        values = [p[column] for p in pairs]
        if len(set(values)) != len(values):
            raise SynthError(f"diffusion_train: labels and label ids do not match one to one: {pairs[:6]}")
    return [label for _, label in pairs], sizes[0][0]


def is_holdout(record_id: str, fraction: float) -> bool:
    """A fixed split by id: the same image is always on the same side, copies included."""
    return int(record_id[:8], 16) / 0xFFFFFFFF < fraction


def split_paths(folder: Path) -> dict[str, Path]:
    return {"train": folder / "data" / "train.parquet", "holdout": folder / "data" / "holdout.parquet"}


def _write_split(table: pa.Table, holdout: list[bool], folder: Path) -> None:
    """The training and held-out images (id, label, label_id as the model numbers it, image)."""
    for name, path in split_paths(folder).items():
        mask = pa.array([h == (name == "holdout") for h in holdout])
        part = table.filter(mask).select(["id", "label", "label_id", "image"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = io.temp_sibling(path)
        pq.write_table(part, tmp)
        os.replace(tmp, path)


def train_table(table: pa.Table, cfg: DiffusionTrainConfig, ctx: StageContext, classes: list[str]) -> pa.Table:
    """Inside the task: split, write the split, train; returns the rows with a `split` column."""
    torch.set_num_threads(torch_threads(cfg))
    folder = model_root(ctx.output_dir, ctx.stage_name)
    index = {label: i for i, label in enumerate(classes)}
    table = set_column(table, "label_id", pa.array([index[x] for x in table.column("label").to_pylist()], pa.int32()))
    holdout = [is_holdout(i, cfg.holdout_fraction) for i in table.column("id").to_pylist()]
    if all(holdout):
        raise SynthError(f"diffusion_train: holdout_fraction {cfg.holdout_fraction} left no training images")
    _write_split(table, holdout, folder)
    train_rows = table.filter(pa.array([not h for h in holdout]))
    images = decode_many(train_rows.column("image").to_pylist())
    labels = np.asarray(train_rows.column("label_id").to_pylist())
    result = train(images, labels, classes, cfg, folder, ctx.stage_seed)
    ctx.count(train_steps=result.steps_run, train_seconds=round(result.seconds, 3), train_images=len(images),
              resumed_from_step=result.resumed_from)  # fmt: skip
    return set_column(table, "split", pa.array(["holdout" if h else "train" for h in holdout]))


@register
class DiffusionTrain(TableStage):
    kind = "diffusion_train"
    Config = DiffusionTrainConfig
    description = "Train a class-conditional DDPM UNet (diffusers format) on labelled images, in one Ray task"

    def worker_env(self) -> dict[str, str]:
        return torch_worker_env(torch_threads(self.config))

    def transform(self, table: pa.Table) -> pa.Table:
        """The training loop is sequential: one task with every image; the rows pass through."""
        classes, size = classes_of(table)
        log.info("diffusion_train: training on all %d-px images in one task; classes %s; folder %s", size, classes,
                 model_root(self.ctx.output_dir, self.ctx.stage_name))  # fmt: skip
        return train_table(table, self.config, self.ctx, classes)
