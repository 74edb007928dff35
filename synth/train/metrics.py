"""Training metrics: one JSON line per step and per eval, per-layer gradient norms, MFU, a loss plot.

`OUTPUT/metrics.jsonl` holds `{"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm",
"grad_norms": {group: norm}, "mfu"?}` for every optimiser step and `{"step", "eval_loss"}` (and
`{"step", "held_out_loss"}` with `data.held_out`) for every eval (step 0 is the model before training). A resumed run first cuts the file back to its
checkpoint's step, so the file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}
"""Dense bf16 peaks by GPU name (datasheets), for MFU; `resources.peak_tflops` overrides."""

_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class MetricsLog:
    """Appends records to a JSONL file, flushed per line so a killed run loses nothing written."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        kept = [line for line in self._lines() if resume_step is not None and json.loads(line)["step"] <= resume_step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
        self.file = path.open("a")

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines(keepends=True) if self.path.exists() else []

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def layer_group(name: str) -> str:
    """`model.layers.3.mlp.up_proj.weight` -> `layer.03`; others keep their module path."""
    match = _LAYER.search(name)
    if match:
        return f"layer.{int(match.group(1)):02d}"
    name = name.removeprefix("base_model.model.")
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """The L2 norm of the gradients of each layer (and of the embeddings, final norm, head)."""
    named = [(layer_group(name), p.grad.detach()) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return {}
    slot: dict[str, int] = {}  # group -> its position, in first-seen order
    index = torch.tensor([slot.setdefault(group, len(slot)) for group, _ in named], device=named[0][1].device)
    # One fused kernel for all norms and one copy to the host: a GPU step pays no sync per tensor.
    squares = torch.stack(torch._foreach_norm([g.float() for _, g in named])) ** 2
    norms = torch.zeros(len(slot), device=squares.device).index_add_(0, index, squares).sqrt().tolist()
    return {group: round(norm, 6) for group, norm in zip(slot, norms)}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's estimate: 6 x compute parameters + 12 x layers x width x seq_len."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    if not getattr(config, "tie_word_embeddings", False):
        params -= embeddings  # a lookup, not a matmul
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The accelerator's bf16 peak in FLOP/s, or None on CPU or an unknown GPU (no MFU then)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def plot_losses(metrics: list[dict], png: Path, title: str) -> None:
    """Train loss (per step and smoothed) and eval loss against step, learning rate below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    steps, losses = [m["step"] for m in train], [m["loss"] for m in train]
    top.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
    top.plot(steps, _moving_average(losses), color="tab:blue", lw=1.5, label="train (smoothed)")
    top.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], "o-", color="tab:red", label="eval")
    held = [m for m in metrics if "held_out_loss" in m]
    if held:
        top.plot([m["step"] for m in held], [m["held_out_loss"] for m in held], "s-", color="tab:green",
                 label="held-out examples")  # fmt: skip
    top.set_ylabel("loss")
    top.set_title(title)
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(steps, [m["lr"] for m in train], color="tab:gray")
    bottom.set_ylabel("lr")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def _moving_average(values: list[float]) -> list[float]:
    """Trailing mean over about 4% of the run: no lag worth the name, most of the step noise gone."""
    window = max(1, len(values) // 25)
    return [sum(values[max(0, i + 1 - window): i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]
