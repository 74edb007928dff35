"""Training throughput: our loop (`synth.train`) beside a plain Hugging Face `Trainer`, in one run.

Both train the same model on the same packed sequences (our data stream's first steps, handed to
the Trainer as a dataset in the same order), with the same micro-batch, accumulation, optimiser,
clipping and precision (fp32 on CPU, bf16 on CUDA). Rounds alternate (ours, Trainer, ours, ...)
so a machine shared with other work slows both alike; each round is a fresh model, and its
first `--warmup` steps are not timed. Tokens are the real (non-padding) tokens of each step. It
prints tokens/s over all timed steps and of each side's fastest step, the one least disturbed
by other work on a busy machine.

    .venv/bin/python bench/train.py                      # embedded SmolLM2-135M, output/instruct
    .venv/bin/python bench/train.py --data DIR --seq-len 512 --steps 20
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import transformers

from synth.train import TrainSpec, run_training
from synth.train.data import IGNORE, Encoder, Packer, Source, TrainStream, parquet_files
from synth.train.metrics import flops_per_token, peak_flops, read_metrics
from synth.train.model import load_model, load_tokenizer

DEFAULT_DATA = Path("output/instruct")


def main() -> None:
    args = _arguments()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    data = args.data if args.data else _fallback_dataset()
    spec = TrainSpec.model_validate({
        "name": "bench", "seed": 0, "model": {"base": args.model},
        "data": {"path": str(data), "eval_fraction": 0}, "seq_len": args.seq_len,
        "batch_size": args.micro_batch * args.accum, "micro_batch_size": args.micro_batch,
        "steps": args.warmup + args.steps, "lr": 5e-5, "warmup_steps": 1, "min_lr_ratio": 0.0,
        "eval_every": 10_000, "checkpoint_every": 10_000, "log_every": 10_000, "resources": {"threads": args.threads}})
    sequences = _sequences(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model {args.model}, data {data} ({sum(s.tokens for s in sequences)} tokens in {len(sequences)} sequences), "
          f"seq_len {spec.seq_len}, batch {spec.batch_size} = {spec.micro_batch_size} x {spec.grad_accum}, "
          f"{device} ({'bf16' if device == 'cuda' else 'fp32'}), {args.threads} threads, "
          f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds")
    ours, theirs = [], []
    for round_ in range(args.rounds):
        (steps, loss), (hf_steps, hf_loss) = _ours(spec, args.warmup), _hf_trainer(spec, sequences, args.warmup, device)
        ours += steps
        theirs += hf_steps
        print(f"  round {round_ + 1}: ours {_rate(steps):8.1f} tokens/s   HF Trainer {_rate(hf_steps):8.1f} tokens/s   "
              f"(first-step loss {loss:.4f} vs {hf_loss:.4f})")
    print(f"{'':12}{'tokens/s (all timed steps)':>28}{'tokens/s (fastest step)':>26}")
    for name, steps in (("ours", ours), ("HF Trainer", theirs)):
        print(f"{name:12}{_rate(steps):28.1f}{max(t / s for t, s in steps):26.1f}")
    best = max(t / s for t, s in ours) / max(t / s for t, s in theirs)
    print(f"{'ours / HF':12}{_rate(ours) / _rate(theirs):28.2f}{best:26.2f}")
    if device == "cuda":
        _print_mfu(spec, {"ours": ours, "HF Trainer": theirs})


def _print_mfu(spec: TrainSpec, rates: dict[str, list[tuple[int, float]]]) -> None:
    """Model FLOPs utilisation of each side at its all-steps rate (PaLM's FLOPs per token)."""
    model = load_model(spec.model, load_tokenizer(spec.model), spec.seq_len, spec.seed)
    per_token, peak = flops_per_token(model, spec.seq_len), peak_flops(torch.device("cuda"), None)
    name = torch.cuda.get_device_name()
    if peak is None:
        print(f"MFU: no bf16 peak known for {name}")
        return
    print(f"MFU on {name} (bf16 peak {peak / 1e12:.0f} TFLOP/s): "
          + ", ".join(f"{side} {_rate(steps) * per_token / peak:.1%}" for side, steps in rates.items()))


def _rate(steps: list[tuple[int, float]]) -> float:
    """Tokens per second over (tokens, seconds) steps."""
    return sum(t for t, _ in steps) / sum(s for _, s in steps)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help=f"Parquet dataset (default: {DEFAULT_DATA}, else the seed tasks)")
    parser.add_argument("--model", default="embedded", help="embedded, or a local Hugging Face model folder")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="Timed optimiser steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step is where both pay their one-time costs")
    return args


def _fallback_dataset() -> Path:
    """output/instruct when it was generated; else the instruct seed tasks as a Parquet folder."""
    if DEFAULT_DATA.is_dir():
        return DEFAULT_DATA
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    seeds = Path(__file__).resolve().parent.parent / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"
    rows = [{"instruction": t["instruction"], "input": i["input"], "output": i["output"]}
            for t in map(json.loads, seeds.read_text().splitlines()) for i in t["instances"]]
    folder = Path(tempfile.mkdtemp(prefix="bench-train-"))
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    return folder


def _sequences(spec: TrainSpec) -> list:
    """The packed sequences our loop will train on, in order (its stream with the same seed)."""
    tokenizer = load_tokenizer(spec.model)
    source = Source(spec.data, parquet_files(spec.data.path), spec.seed)
    stream = iter(TrainStream(source, Encoder(spec.data, source, tokenizer, spec.seq_len),
                              Packer(spec.seq_len, tokenizer.pad_token_id, cut_documents=False), spec.seed))
    return [next(stream) for _ in range(spec.steps * spec.batch_size)]


def _ours(spec: TrainSpec, warmup: int) -> tuple[list[tuple[int, float]], float]:
    """(tokens, seconds) of each timed step, and the first step's loss."""
    with tempfile.TemporaryDirectory() as out:
        run_training(spec.model_copy(update={"output": Path(out) / "run"}))
        steps = [m for m in read_metrics(Path(out) / "run" / "metrics.jsonl") if "loss" in m]
    return [(m["tokens"], m["tokens"] / m["tokens_per_s"]) for m in steps[warmup:]], steps[0]["loss"]


def _hf_trainer(spec: TrainSpec, sequences: list, warmup: int, device: str) -> tuple[list[tuple[int, float]], float]:
    from transformers import (
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model, tokenizer, spec.seq_len, spec.seed)
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=spec.steps, per_device_train_batch_size=spec.micro_batch_size,
            gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, lr_scheduler_type="cosine",
            warmup_steps=spec.warmup_steps, weight_decay=spec.weight_decay, adam_beta1=spec.betas[0],
            adam_beta2=spec.betas[1], max_grad_norm=spec.grad_clip, logging_steps=1, save_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=device == "cpu", bf16=device == "cuda",
            dataloader_num_workers=0, train_sampling_strategy="sequential", seed=spec.seed)
        trainer = Trainer(model=model, args=args, train_dataset=_HFSequences(sequences), callbacks=[clock])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    b = spec.batch_size
    steps = [(sum(s.tokens for s in sequences[i * b:(i + 1) * b]), clock.ends[i] - clock.ends[i - 1])
             for i in range(warmup, spec.steps)]
    return steps, next(h["loss"] for h in trainer.state.log_history if "loss" in h)


class _HFSequences(torch.utils.data.Dataset):
    """Our sequences as the Trainer wants them: labels unshifted (the model shifts them back)."""

    def __init__(self, sequences: list):
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.sequences[i]
        labels = torch.full((len(s.targets),), IGNORE, dtype=torch.long)
        labels[1:] = torch.from_numpy(s.targets[:-1])
        return {"input_ids": torch.from_numpy(s.input_ids), "position_ids": torch.from_numpy(s.position_ids),
                "labels": labels}


if __name__ == "__main__":
    main()
