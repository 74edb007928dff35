"""The training loop: one file to read top to bottom, in the spirit of nanoGPT's `train.py`.

    setup     device, tokenizer, model (+LoRA), data streams, AdamW, warmup+cosine, resume
              (schedule, precision and checkpoints: `synth.train.conventions`, as the diffusion loop)
    step      `batch_size` packed sequences per optimiser step, this worker's share of them in
              micro-batches with gradient accumulation; bf16 autocast on CUDA, fp32 on CPU;
              clip, step, one metrics line
    eval      every `eval_every` steps (and before the first): loss on the eval split's sequences
              and, with `data.held_out`, on those examples kept out of the data (held_out_loss)
    save      every `checkpoint_every` steps: weights, optimiser, scheduler, RNG and data position,
              written to a temporary folder and renamed into place
    finish    final eval, the Hugging Face model folder, the loss plot, summary.json

The same function runs alone or as one of several DDP workers (Ray Train starts those; see
`synth.train.distributed`). Every worker reads the same stream of sequences and keeps its own
slice of each step's batch, so a step sees the same sequences for any number of workers, and a
checkpoint's data position holds for any of them. The loss of a step is the mean over all its
target tokens, whichever worker holds them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from synth.train import conventions
from synth.train import data as D
from synth.train.conventions import precision_for, scheduled_lr
from synth.train.metrics import (
    MetricsLog,
    flops_per_token,
    grad_norms,
    peak_flops,
    plot_losses,
    read_metrics,
)
from synth.train.model import (
    CausalLMLoss,
    load_model,
    load_tokenizer,
    load_trainable_state,
    save_model,
    trainable_state,
)
from synth.train.spec import TrainError, TrainSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    """Where a training run reads and writes."""

    output: Path
    data_files: list[Path]
    fingerprint: str

    checkpoints = property(lambda self: self.output / "checkpoints")
    metrics = property(lambda self: self.output / "metrics.jsonl")
    plot = property(lambda self: self.output / "loss.png")
    model = property(lambda self: self.output / "model")
    summary = property(lambda self: self.output / "summary.json")


@dataclass
class Worker:
    """This process's place among the workers; `report` is Ray Train's (None alone)."""

    device: torch.device
    rank: int = 0
    world: int = 1
    report: Callable[[dict], None] | None = field(default=None, repr=False)

    @property
    def leader(self) -> bool:
        return self.rank == 0


def train(spec: TrainSpec, paths: RunPaths, worker: Worker) -> dict:
    """Train from the latest checkpoint in `paths` (or from the start); returns the summary."""
    threads = torch.get_num_threads()
    try:
        return _train(spec, paths, worker)
    finally:
        torch.set_num_threads(threads)


def _train(spec: TrainSpec, paths: RunPaths, worker: Worker) -> dict:
    # ------------------------------------------------------------ setup
    started = time.perf_counter()
    if worker.device.type == "cpu":
        torch.set_num_threads(_threads(spec, worker))
    torch.manual_seed(spec.seed + worker.rank)
    tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model, tokenizer, spec.seq_len, spec.seed).to(worker.device)
    model.train()
    loss_model = CausalLMLoss(model)
    step_model = _ddp(loss_model, worker)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(spec, params)
    # LambdaLR multiplies each group's lr by the factor: the schedule of a peak of 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: scheduled_lr(
        1.0, i, warmup_steps=spec.warmup_steps, total_steps=spec.steps, min_ratio=spec.min_lr_ratio))
    autocast = precision_for(worker.device).autocast
    source, encoder, eval_set = _data(spec, paths, tokenizer)
    held_out = D.held_out_sequences(spec.data.held_out, encoder, _packer(spec, tokenizer)) if spec.data.held_out else []

    state = _restore(paths, model, optimizer, scheduler, worker)
    start = state["step"] if state else 0
    stream = D.TrainStream(source, encoder, _packer(spec, tokenizer), spec.seed, state["data"] if state else None)
    metrics = MetricsLog(paths.metrics, start if state else None) if worker.leader else None
    flops = flops_per_token(model, spec.seq_len)
    peak = peak_flops(worker.device, spec.resources.peak_tflops)
    log.info("training %s: %d steps of %d x %d tokens (%d worker(s), %d micro-batches each), %s, from step %d",
             spec.name, spec.steps, spec.batch_size, spec.seq_len, worker.world, spec.grad_accum, worker.device, start)

    if start == 0 and eval_set:
        _log_eval(metrics, 0, evaluate(loss_model, eval_set, spec.micro_batch_size, worker, autocast))
    if start == 0 and held_out:
        _log_eval(metrics, 0, evaluate(loss_model, held_out, spec.micro_batch_size, worker, autocast), "held_out_loss")

    # ------------------------------------------------------------ steps
    tokens_seen = state["tokens_seen"] if state else 0
    last: dict = {}
    with D.Prefetcher(stream, spec.batch_size) as batches:  # the next batches are read while a step runs
        for step in range(start + 1, spec.steps + 1):
            t0 = time.perf_counter()
            batch, data_state = batches.next()
            loss = train_step(spec, step_model, batch, worker, autocast)
            norms = grad_norms(model) if worker.leader else {}
            total_norm = torch.nn.utils.clip_grad_norm_(params, spec.grad_clip or math.inf)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if worker.device.type == "cuda":
                torch.cuda.synchronize(worker.device)
            seconds = time.perf_counter() - t0
            tokens = sum(s.tokens for s in batch)
            tokens_seen += tokens
            last = {"step": step, "loss": round(loss, 6), "lr": lr, "tokens": tokens,
                    "tokens_per_s": round(tokens / seconds, 2), "grad_norm": round(float(total_norm), 6),
                    "grad_norms": norms}
            if peak:
                last["mfu"] = round(flops * spec.seq_len * spec.batch_size / seconds / (peak * worker.world), 4)
            if metrics:
                metrics.write(last)
            if worker.leader and (step % spec.log_every == 0 or step == 1):
                log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s", step, spec.steps, loss, lr, last["tokens_per_s"])

            # -------------------------------------------------------- eval
            if eval_set and (step % spec.eval_every == 0 or step == spec.steps):
                last["eval_loss"] = evaluate(loss_model, eval_set, spec.micro_batch_size, worker, autocast)
                _log_eval(metrics, step, last["eval_loss"])
            if held_out and (step % spec.eval_every == 0 or step == spec.steps):
                last["held_out_loss"] = evaluate(loss_model, held_out, spec.micro_batch_size, worker, autocast)
                _log_eval(metrics, step, last["held_out_loss"], "held_out_loss")

            # -------------------------------------------------------- save
            if step % spec.checkpoint_every == 0 and step < spec.steps:
                save_checkpoint(paths, spec, step, model, optimizer, scheduler, data_state, tokens_seen, worker)
                if worker.report:
                    worker.report({k: v for k, v in last.items() if k != "grad_norms"})

    # ------------------------------------------------------------ finish
    summary = {"model": str(paths.model), "steps": spec.steps, "tokens": tokens_seen,
               "seconds_this_run": round(time.perf_counter() - started, 1), "resumed_from_step": start}
    if worker.leader:
        metrics.close()
        summary |= finish(paths, spec, model, tokenizer)
    if worker.report:
        worker.report({k: v for k, v in last.items() if k != "grad_norms"})
    return summary


def train_step(spec: TrainSpec, step_model: torch.nn.Module, batch: list[D.Sequence], worker: Worker,
               autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Forward and backward over this worker's share of `batch`; returns the loss of the whole batch.

    Each micro-batch's summed loss is divided by the target tokens of the whole batch (and
    multiplied by the worker count, which DDP's gradient averaging divides back out), so the
    gradient is that of the batch's mean token loss for any accumulation and worker count.
    """
    share = spec.batch_size // worker.world
    mine = batch[worker.rank * share:(worker.rank + 1) * share]
    targets = sum(int((s.targets != D.IGNORE).sum()) for s in batch)
    total = torch.zeros((), device=worker.device)
    micro_batches = list(_chunks(mine, spec.micro_batch_size))
    for i, micro in enumerate(micro_batches):
        syncing = worker.world == 1 or i == len(micro_batches) - 1
        with (contextlib.nullcontext() if syncing else step_model.no_sync()), autocast():
            loss, _ = step_model(**collate(micro, worker.device))
        (loss * worker.world / max(targets, 1)).backward()
        total += loss.detach()
    if worker.world > 1:
        torch_dist.all_reduce(total)
    return total.item() / max(targets, 1)


@torch.no_grad()
def evaluate(loss_model: CausalLMLoss, eval_set: list[D.Sequence], micro: int, worker: Worker,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Mean token loss over the eval sequences, each worker taking every world-th one."""
    loss_model.eval()
    sums = torch.zeros(2, device=worker.device, dtype=torch.float64)
    for chunk in _chunks(eval_set[worker.rank::worker.world], micro):
        with autocast():
            loss, count = loss_model(**collate(chunk, worker.device))
        sums += torch.stack([loss.double(), count.double()])
    if worker.world > 1:
        torch_dist.all_reduce(sums)
    loss_model.train()
    return round(float(sums[0] / sums[1].clamp(min=1)), 6)


def collate(sequences: list[D.Sequence], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.stack([getattr(s, name) for s in sequences])).to(device, non_blocking=True)
            for name in ("input_ids", "position_ids", "targets")}


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(paths: RunPaths, spec: TrainSpec, step: int, model: torch.nn.Module, optimizer, scheduler,
                    data_state: dict, tokens_seen: int, worker: Worker) -> None:
    rng = _gather(_rng_state(worker.device), worker)
    if not worker.leader:
        return
    state = {"model": trainable_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng, "data": data_state, "tokens_seen": tokens_seen}
    final = conventions.save_checkpoint(paths.checkpoints, step, state, paths.fingerprint, keep=spec.keep_checkpoints)
    log.info("checkpoint %s", final)


def _restore(paths: RunPaths, model, optimizer, scheduler, worker: Worker) -> dict | None:
    """Load the newest checkpoint of this run into the model, optimiser, scheduler and RNG."""
    state = conventions.load_checkpoint(paths.checkpoints, paths.fingerprint, worker.device)
    if state is None:
        return None
    load_trainable_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"][worker.rank] if worker.rank < len(state["rng"]) else state["rng"][0]
    torch.set_rng_state(rng["cpu"].cpu())
    if worker.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), worker.device)
    log.info("resuming from step %d", state["step"])
    return state


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """Torch's RNG (dropout); data order needs none: it comes from seeded generators."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _gather(obj, worker: Worker) -> list:
    if worker.world == 1:
        return [obj]
    out = [None] * worker.world
    torch_dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- finish


def finish(paths: RunPaths, spec: TrainSpec, model: torch.nn.Module, tokenizer) -> dict:
    """Write the model folder (atomically, last), the plot and the summary."""
    from synth import io

    records = read_metrics(paths.metrics)
    plot_losses(records, paths.plot, f"{spec.name}: {spec.model.base}, {spec.data.format}")
    summary = {"train_loss_last": next((r["loss"] for r in reversed(records) if "loss" in r), None)}
    for name in ("eval_loss", "held_out_loss"):
        values = [r[name] for r in records if name in r]
        summary |= {f"{name}_first": values[0] if values else None, f"{name}_last": values[-1] if values else None}
    tmp = paths.output / f".model.tmp-{uuid.uuid4().hex[:8]}"
    save_model(model, tokenizer, tmp)
    io.write_json_atomic(paths.summary, {"fingerprint": paths.fingerprint, **summary})
    os.replace(tmp, paths.model)
    return summary


# ---------------------------------------------------------------- helpers


def _data(spec: TrainSpec, paths: RunPaths, tokenizer) -> tuple[D.Source, D.Encoder, list[D.Sequence]]:
    """The dataset, its encoder, and the held-out sequences (none with `eval_fraction: 0`)."""
    source = D.Source(spec.data, paths.data_files, spec.seed)
    encoder = D.Encoder(spec.data, source, tokenizer, spec.seq_len)
    if not spec.data.eval_fraction:
        return source, encoder, []
    return source, encoder, D.eval_sequences(source, encoder, _packer(spec, tokenizer), spec.data.eval_sequences)


def _packer(spec: TrainSpec, tokenizer) -> D.Packer:
    return D.Packer(spec.seq_len, tokenizer.pad_token_id, cut_documents=spec.data.format == "pretrain")


def _ddp(module: torch.nn.Module, worker: Worker) -> torch.nn.Module:
    if worker.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [worker.device.index] if worker.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _adamw(spec: TrainSpec, params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    """Weight decay on matrices only; the fused kernel (about 4x faster than the per-tensor loop on CPU)."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, fused=True)


def _threads(spec: TrainSpec, worker: Worker) -> int:
    if spec.resources.threads:
        return spec.resources.threads
    return max(1, int(spec.resources.cpus_per_worker)) if worker.world > 1 else os.cpu_count() or 1


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _log_eval(metrics: MetricsLog | None, step: int, loss: float, name: str = "eval_loss") -> None:
    if metrics:
        metrics.write({"step": step, name: loss})
        log.info("step %d  %s %.4f", step, name.replace("_", " "), loss)


def device_for(spec: TrainSpec) -> torch.device:
    """CUDA when asked for or (by default) present; an error when asked for and absent."""
    use_gpu = spec.resources.use_gpu
    if use_gpu and not torch.cuda.is_available():
        raise TrainError("resources.use_gpu: true, but torch sees no CUDA device here")
    return torch.device("cuda" if (use_gpu is None and torch.cuda.is_available()) or use_gpu else "cpu")
