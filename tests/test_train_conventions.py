"""The schedule, precision and checkpoint convention the LLM and diffusion loops share
(`synth.train.conventions`)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from generators.image.diffusion import DiffusionTrainParams, learning_rate
from synth.train.conventions import load_checkpoint, precision_for, save_checkpoint, scheduled_lr


def test_the_schedule_warms_up_linearly_then_decays_towards_the_floor_it_reaches_after_the_last_step():
    rates = [scheduled_lr(1.0, i, warmup_steps=4, total_steps=10, min_ratio=0.1) for i in range(11)]
    assert rates[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])  # the first step after warmup at the peak
    assert all(a > b for a, b in zip(rates[4:], rates[5:]))
    assert rates[9] > 0.1 and rates[10] == pytest.approx(0.1)  # the last step just above the floor
    assert scheduled_lr(2.0, 0, warmup_steps=0, total_steps=1, min_ratio=0.0) == 2.0  # one step, no warmup


def test_diffusion_training_keeps_the_schedule_it_had_before_the_loops_shared_one():
    """Its rates to the last bit, as its loop wrote them before (warmup, then the cosine to 10%):
    a rate rounded otherwise would change every weight after it, and the image pipelines' data."""
    cfg = DiffusionTrainParams(steps=1500, warmup_steps=100, learning_rate=0.002)  # pipelines/image.yaml

    def before(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    assert [learning_rate(s, cfg) for s in range(cfg.steps)] == [before(s) for s in range(cfg.steps)]
    floor = DiffusionTrainParams(steps=50, warmup_steps=5, learning_rate=1e-3, min_lr_ratio=0.2)
    assert learning_rate(4, floor) == pytest.approx(1e-3) and learning_rate(50, floor) == pytest.approx(2e-4)


def test_cpu_trains_in_fp32_whatever_is_asked(caplog):
    assert precision_for(torch.device("cpu")).name == "fp32"
    with caplog.at_level(logging.WARNING):
        precision = precision_for(torch.device("cpu"), "bf16", "diffusion")
    assert precision.name == "fp32" and "diffusion: bf16 autocast needs CUDA" in caplog.text
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not precision.grad_scaler().is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trains_in_bf16_by_default():
    precision = precision_for(torch.device("cuda"))
    assert precision.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    with precision.autocast():
        out = torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")
    assert out.dtype == (torch.bfloat16 if precision.name == "bf16" else torch.float32)
    assert precision_for(torch.device("cuda"), "fp16").grad_scaler().is_enabled()


def test_a_run_resumes_from_its_newest_checkpoint_and_keeps_only_the_newest(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(folder, step, {"w": torch.full((2,), float(step))}, "run-a", keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000004", "step-0000006"]
    state = load_checkpoint(folder, "run-a")
    assert state["step"] == 6 and torch.equal(state["w"], torch.full((2,), 6.0))


def test_a_checkpoint_of_another_fingerprint_is_never_resumed_and_goes_on_the_next_save(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 8, {"w": torch.zeros(1)}, "other-config")
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(folder, "this-config") is None
    assert "another config or data set" in caplog.text
    save_checkpoint(folder, 2, {"w": torch.ones(1)}, "this-config")
    assert [p.name for p in folder.iterdir()] == ["step-0000002"]
    assert load_checkpoint(folder, "this-config")["step"] == 2


def test_a_checkpoint_killed_while_written_is_invisible_and_cleared(tmp_path):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 2, {"w": torch.ones(1)}, "run")
    torn = folder / ".step-0000004.tmp-deadbeef"  # what a kill inside torch.save leaves
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"half a file")
    assert load_checkpoint(folder, "run")["step"] == 2
    save_checkpoint(folder, 4, {"w": torch.ones(1)}, "run")
    assert [p.name for p in folder.iterdir()] == ["step-0000004"]
