"""What every training loop of the project does the same way: schedule, precision, checkpoints.

The LLM loop (`synth.train.loop`) and the diffusion loop (`generators.image.diffusion`) both use
this module, so `warmup_steps`, `precision` or a checkpoint folder mean one thing in both.

- schedule (`scheduled_lr`): linear warmup over `warmup_steps`, then a cosine decay from the peak
  towards `min_ratio` of it, which it would reach one step after the last.
- precision (`precision_for`): `auto` is bf16 autocast on a CUDA device with bf16, else fp32
  (CPU included); `bf16` and `fp16` need CUDA and fall back to fp32 elsewhere with a warning;
  fp16 comes with a gradient scaler, bf16 and fp32 need none.
- checkpoints (`save_checkpoint`, `load_checkpoint`): `FOLDER/step-NNNNNNN/state.pt` beside a
  `fingerprint` file naming what decides the weights (config and data). Each is written into a
  temporary folder and renamed into place, so a kill leaves no half checkpoint; a run resumes
  from the newest one of its own fingerprint; saving removes checkpoints of other fingerprints
  and keeps the newest `keep` of its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
CHECKPOINT = "state.pt"
FINGERPRINT = "fingerprint"


# ---------------------------------------------------------------- schedule


def scheduled_lr(peak: float, index: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The learning rate of step `index` (0-based) of `total_steps` for a peak rate of `peak`.

    Warmup: step i < warmup_steps runs at peak * (i + 1) / warmup_steps. Then a cosine from the
    peak (at step warmup_steps) that would reach peak * min_ratio at step total_steps, one past
    the last (the cosine of transformers' `get_cosine_schedule_with_warmup`). It is the schedule the
    diffusion loop had before the loops shared it, so its models (and the image pipelines'
    records) stayed the same. The sums are written in that loop's order: a different rounding
    of the rate changes every weight after it.
    """
    if index < warmup_steps:
        return peak * (index + 1) / warmup_steps
    progress = (index - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """How a loop computes on its device: an autocast dtype (None: plain fp32)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh context for one forward pass."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs its loss scaled against underflow; for bf16 and fp32 the scaler does nothing."""
        return torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)


def precision_for(device: torch.device, requested: PrecisionName = "auto", who: str = "training") -> Precision:
    """The precision a loop on `device` runs at when `requested` (see the module's docstring)."""
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            log.warning("%s: %s autocast needs CUDA; training in fp32 on %s", who, requested, device)
        return Precision(device.type)
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    return Precision("cuda", dtype)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, step: int, state: dict, fingerprint: str, keep: int = 1) -> Path:
    """Write `state` (tensors and plain data) as the checkpoint of `step`; returns its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step-*.tmp-*"):  # an earlier attempt killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    final = folder / f"step-{step:07d}"
    tmp = folder / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    torch.save({**state, "step": step}, tmp / CHECKPOINT)
    (tmp / FINGERPRINT).write_text(fingerprint)
    if final.exists():  # the same step of another fingerprint
        shutil.rmtree(final)
    os.replace(tmp, final)
    ours = [c for c in _checkpoints(folder) if _fingerprint(c) == fingerprint]
    for old in [c for c in _checkpoints(folder) if c not in ours[-keep:]]:
        shutil.rmtree(old)
    return final


def load_checkpoint(folder: Path, fingerprint: str, map_location: torch.device | str = "cpu") -> dict | None:
    """The state of the newest checkpoint of `fingerprint` in `folder` (with its `step`), or None."""
    checkpoints = _checkpoints(folder)
    ours = [c for c in checkpoints if _fingerprint(c) == fingerprint]
    if checkpoints and not ours:
        log.warning("%s holds checkpoints of another config or data set only; starting from scratch", folder)
    if not ours:
        return None
    log.info("resuming from %s", ours[-1])
    return torch.load(ours[-1] / CHECKPOINT, map_location=map_location, weights_only=True)


def _checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder appears only whole, by rename)."""
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def _fingerprint(checkpoint: Path) -> str | None:
    path = checkpoint / FINGERPRINT
    return path.read_text() if path.is_file() else None
