"""The training loop end to end on a tiny model: it learns, it writes a model that loads, a SIGKILLed
run resumes on the same loss curve from the same data position, LoRA trains adapters only, and two
Ray Train workers follow one worker's curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_data import tiny_spec, write_instruct_dataset, write_spec
from transformers import AutoModelForCausalLM

from synth.errors import OutputExistsError
from synth.llm.base import SamplingParams
from synth.llm.local import LocalClient
from synth.spec import LLMSpec
from synth.train import load_train_spec, run_training
from synth.train.metrics import read_metrics


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_instruct_dataset(tmp_path_factory.mktemp("train") / "instruct")


def losses(output: Path) -> list[tuple[int, str, float]]:
    return [(m["step"], "eval" if "eval_loss" in m else "train", m.get("eval_loss", m.get("loss")))
            for m in read_metrics(output / "metrics.jsonl")]


def test_training_lowers_eval_loss_and_writes_a_model_the_local_backend_loads(tmp_path, dataset):
    spec = load_train_spec(write_spec(tmp_path / "train.yaml", tiny_spec(dataset, tmp_path / "out")))
    model_dir = run_training(spec)

    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31)) and len(evals) == 4
    assert evals[-1] < evals[0] - 2 and steps[-1]["loss"] < steps[0]["loss"] - 2
    assert {"lr", "tokens_per_s", "grad_norm"} <= set(steps[0]) and "layer.01" in steps[0]["grad_norms"]
    assert steps[2]["lr"] == pytest.approx(3e-3) and steps[-1]["lr"] < steps[3]["lr"]
    assert (tmp_path / "out" / "loss.png").read_bytes()[:4] == b"\x89PNG"

    assert AutoModelForCausalLM.from_pretrained(model_dir).config.num_hidden_layers == 2
    client = LocalClient(LLMSpec(model=str(model_dir), threads=1))
    [completion] = client.generate([[{"role": "user", "content": "Add the two numbers.\n\n3 and 4"}]],
                                   SamplingParams(max_tokens=8, temperature=0))
    assert completion.completion_tokens > 0

    written = (tmp_path / "out" / "metrics.jsonl").stat().st_mtime_ns
    assert run_training(spec) == model_dir  # finished: returned as it is, not trained again
    assert (tmp_path / "out" / "metrics.jsonl").stat().st_mtime_ns == written
    with pytest.raises(OutputExistsError, match="holds a training run of another spec or dataset"):
        run_training(spec.model_copy(update={"lr": 1e-3}))


def test_sigkill_after_a_checkpoint_resumes_the_same_curve_from_the_same_data_position(tmp_path, dataset):
    changes = {"steps": 60, "keep_checkpoints": 100, "eval_every": 20}
    reference = tmp_path / "reference"
    run_training(load_train_spec(write_spec(tmp_path / "ref.yaml", tiny_spec(dataset, reference, **changes))))

    killed = tmp_path / "killed"
    spec_file = write_spec(tmp_path / "train.yaml", tiny_spec(dataset, killed, **changes))
    checkpoint = killed / "checkpoints" / "step-0000010" / "state.pt"
    proc = subprocess.Popen([sys.executable, "-m", "synth", "train", str(spec_file)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not checkpoint.exists():
            assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-2000:]}"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (killed / "model").exists()
    before = losses(killed)
    assert before[-1][0] < 60, "the run finished before it could be killed"

    run_training(load_train_spec(spec_file))
    resumed_from = max(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("step-*")
                       if int(p.name.split("-")[1]) <= before[-1][0])
    assert resumed_from >= 10
    ours, theirs = losses(killed), losses(reference)
    assert [s[:2] for s in ours] == [s[:2] for s in theirs]
    assert [s[2] for s in ours] == pytest.approx([s[2] for s in theirs], rel=1e-5)
    at = lambda output: torch.load(output / "checkpoints" / "step-0000010" / "state.pt", weights_only=True)
    assert at(killed)["data"] == at(reference)["data"]
    weights = [load_file(output / "model" / "model.safetensors") for output in (killed, reference)]
    assert all(torch.allclose(weights[0][name], tensor, atol=1e-5) for name, tensor in weights[1].items())


def test_lora_in_a_pipeline_train_section_trains_only_adapters_and_saves_a_merged_model(tmp_path, dataset):
    spec = tiny_spec(dataset, tmp_path / "unused", steps=4, eval_every=2, checkpoint_every=2)
    spec["model"] = spec["model"] | {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}
    del spec["output"], spec["data"]["path"]  # as in a pipeline: the run's own OUTPUT/data, OUTPUT/train
    model_dir = run_training(load_train_spec(write_spec(tmp_path / "train.yaml", spec)), dataset / "data")

    assert model_dir == dataset / "train" / "model"
    state = torch.load(dataset / "train" / "checkpoints" / "step-0000002" / "state.pt", weights_only=True)
    assert state["model"] and all("lora_" in name for name in state["model"])
    weights = load_file(model_dir / "model.safetensors")
    assert not any("lora" in name for name in weights) and "model.layers.0.self_attn.q_proj.weight" in weights


def test_two_ray_train_workers_follow_one_worker_with_the_same_global_batch(ray_session, tmp_path, dataset):
    changes = {"steps": 8, "eval_every": 4, "checkpoint_every": 4}
    one = tmp_path / "one"
    run_training(load_train_spec(write_spec(tmp_path / "one.yaml", tiny_spec(dataset, one, **changes))))
    two = tmp_path / "two"
    spec = tiny_spec(dataset, two, **changes)
    spec["resources"] = {"threads": 1, "workers": 2}
    assert load_train_spec(write_spec(tmp_path / "two.yaml", spec)).grad_accum == 1
    run_training(load_train_spec(tmp_path / "two.yaml"))

    assert [s[:2] for s in losses(two)] == [s[:2] for s in losses(one)]
    assert [s[2] for s in losses(two)] == pytest.approx([s[2] for s in losses(one)], rel=1e-4)
    assert json.loads((two / "summary.json").read_text())["eval_loss_last"] < losses(two)[0][2]


@pytest.mark.slow
def test_embedded_smollm2_fine_tunes_a_few_steps(tmp_path, dataset):
    spec = tiny_spec(dataset, tmp_path / "out", steps=3, lr=5e-5, warmup_steps=1, eval_every=3, checkpoint_every=3,
                     batch_size=2, micro_batch_size=1, seq_len=64)
    spec["model"] = {"base": "embedded"}
    spec["data"] = spec["data"] | {"eval_sequences": 2}
    model_dir = run_training(load_train_spec(write_spec(tmp_path / "train.yaml", spec)))

    evals = [r["eval_loss"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "eval_loss" in r]
    assert len(evals) == 2 and 0 < evals[1] < evals[0] < 10
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.num_hidden_layers == 30
