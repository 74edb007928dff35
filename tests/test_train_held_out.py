"""`data.held_out`: the loss of answers kept out of the training data, before and after training
(the measure of what generated instruction data teaches: seed tasks a self_instruct stage held out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_data import tiny_spec, write_instruct_dataset, write_spec

from synth.train import load_train_spec, run_training
from synth.train.metrics import read_metrics
from synth.train.spec import TrainError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_held_out_answers_are_measured_before_and_after_training(tmp_path):
    dataset = write_instruct_dataset(tmp_path / "instruct")
    # Tasks like the training data's but never in it: training on the data should lower their loss.
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [
        {"instruction": "Add the two numbers.", "input": "61 and 7", "output": "The sum is 68."},
        {"instruction": "Repeat the color in capitals.", "input": "orange", "output": "ORANGE"},
        {"instruction": "Count from 1 to 4.", "input": "", "output": "1, 2, 3, 4"},
    ])  # fmt: skip
    spec = tiny_spec(dataset, tmp_path / "out")
    spec["data"] |= {"held_out": str(held_out)}
    run_training(load_train_spec(write_spec(tmp_path / "train.yaml", spec)))

    held = [(r["step"], r["held_out_loss"]) for r in read_metrics(tmp_path / "out" / "metrics.jsonl")
            if "held_out_loss" in r]  # fmt: skip
    assert [step for step, _ in held] == [0, 10, 20, 30]
    assert held[-1][1] < held[0][1] - 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["held_out_loss_first"], summary["held_out_loss_last"]) == (held[0][1], held[-1][1])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"instruction": "Add.", "input": "1 and 2"}'], r"held_out.jsonl:1: data.held_out rows need the columns "
                                                           r"\['instruction', 'input', 'output'\]; this one lacks \['output'\]"),
        (['{"instruction": "Add.", "input": "", "output": "3"}', "{oops"], r"held_out.jsonl:2: not valid JSON"),
        ([], r"data.held_out: .*held_out.jsonl holds no rows"),
    ],
)  # fmt: skip
def test_a_bad_held_out_file_is_one_clear_error(tmp_path, lines, message):
    dataset = write_instruct_dataset(tmp_path / "instruct", rows=12)
    (tmp_path / "held_out.jsonl").write_text("\n".join(lines))
    spec = tiny_spec(dataset, tmp_path / "out", steps=4, warmup_steps=1)
    spec["data"] |= {"held_out": str(tmp_path / "held_out.jsonl")}
    with pytest.raises(TrainError, match=message):
        run_training(load_train_spec(write_spec(tmp_path / "train.yaml", spec)))
