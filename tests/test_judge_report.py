"""judge_report: verdicts parsed from the shapes judges answer in, a fixed seeded sample judged on Ray
and reported for the card and `synth inspect`, and the verdicts' agreement with hand labels."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from filters.quality.judge_report import JudgeReport, JudgeReportConfig, seeded_sample
from filters.quality.verdicts import CORRECT_PROMPT, SENSIBLE_PROMPT, parse_yes_no, request, verdict_agreement
from synth.llm import Completion
from synth.spec import LLMSpec
from synth.stage import StageContext

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [("yes", True), ("no", False), (" **No.** The sum is 15.", False), ("Yes, it is a task", True),
     ("The output looks fine.", None), ("nothing", None), ("", None)],
)  # fmt: skip
def test_parse_yes_no_reads_the_first_word(answer, verdict):
    assert parse_yes_no(answer) is verdict


def test_request_keeps_braces_and_marks_an_empty_input():
    [message] = request(CORRECT_PROMPT, "Format {output} as JSON: {}", "", '{"a": 1}')
    assert "Instruction: Format {output} as JSON: {}\nInput: (none)\nAnswer: {\"a\": 1}\nCorrect:" in message["content"]


class Judge:
    """A stand-in judge (the real ones are measured below, slow): 'no' to the sensible question of
    an instruction holding 'bad task' and to the correct question of an output holding 'bad answer';
    it records what it was asked."""

    model_id = "stand-in"

    def __init__(self):
        self.asked = []

    def generate(self, requests, sampling):
        self.asked += [r[0]["content"] for r in requests]
        return [Completion("no" if question_of(r) in r[0]["content"] else "yes", 1, 1) for r in requests]

    def close(self):
        pass


def question_of(request) -> str:
    """What a stand-in says 'no' to: the bad part of the record the request asks about."""
    return "bad task" if request[0]["content"].endswith("Sensible:") else "bad answer"


def records(n: int) -> pa.Table:
    return pa.table({
        "id": [f"id{i:03d}" for i in range(n)],
        "instruction": [f"Do task {i}." if i % 4 else f"A bad task {i}" for i in range(n)],
        "input": [""] * n,
        "output": [f"Answer {i}." if i % 3 else f"A bad answer {i}." for i in range(n)],
        "evol_round": pa.array([0] * n, pa.int32()),
    })  # fmt: skip


def test_a_fixed_seeded_sample_is_judged_and_reported(ray_session, tmp_path, monkeypatch):
    table = records(100)
    ds = ray_session.data.from_arrow(table).repartition(4)
    shuffled = ray_session.data.from_arrow(table.take(list(range(99, -1, -1)))).repartition(3)
    first = seeded_sample(ds, 30, seed=5)
    assert len(first) == 30 and len({r["id"] for r in first}) == 30
    assert seeded_sample(shuffled, 30, seed=5) == first  # the same records whatever the order and blocks
    assert [r["id"] for r in seeded_sample(ds, 30, seed=6)] != [r["id"] for r in first]
    assert set(first[0]) == {"id", "instruction", "input", "output"}

    ctx = StageContext(run_name="t", run_id="r", seed=5, stage_name="judge_report", stage_index=5,
                       output_dir=tmp_path, llm_specs={"judge": LLMSpec()})  # fmt: skip
    stage = JudgeReport(JudgeReportConfig(llm="judge", records=30), ctx)
    judge = Judge()
    monkeypatch.setattr(ctx.__class__, "llm", lambda self, name: judge)
    assert stage.apply(ds).count() == 100  # nothing dropped, everything passed on
    assert len(judge.asked) == 60  # two questions a record

    report = json.loads((tmp_path / "_reports" / "judge_report" / "report.json").read_text())
    bad_tasks = sum("bad task" in r["instruction"] for r in first)
    bad_answers = sum("bad answer" in r["output"] for r in first)
    assert (report["sensible"], report["correct"], report["judged"]) == (30 - bad_tasks, 30 - bad_answers, 30)
    assert report["summary"] == (f"judge (stand-in) on 30 sampled records: instructions sensible {30 - bad_tasks}/30, "
                                 f"outputs correct {30 - bad_answers}/30")  # fmt: skip
    assert [r["id"] for r in report["records"]] == [r["id"] for r in first]
    markdown = (tmp_path / "_reports" / "judge_report" / "report.md").read_text()
    assert f"{30 - bad_tasks} of 30 instructions sensible" in markdown and markdown.count("\n| ") == 31


HELD_OUT = ("judge_labelled.jsonl", "judge_bad_instructions.jsonl", "judge_run_records.jsonl",
            "judge_more_labelled.jsonl")  # fmt: skip
"""Hand-labelled records the prompts were not tuned on: answers of the rubric test, instructions a
real run produced that are not tasks, the records of the README's instruct run the developer read,
and right answers to those tasks. The prompts were tuned on `judge_tuning.jsonl` alone."""


def labelled_records() -> list[dict]:
    rows = []
    for name in HELD_OUT:
        for line in (DATA / name).read_text().splitlines():
            r = json.loads(line)
            rows.append({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["response"],
                         "good": r["good"], "sensible": r["sensible"]})  # fmt: skip
    return rows


def test_agreement_counts_each_verdict_against_its_label():
    labelled = labelled_records()
    assert len(labelled) == 66 and sum(r["sensible"] for r in labelled) == 52 and sum(r["good"] for r in labelled) == 24

    def labels_by_question(r: dict) -> dict[str, bool]:
        return {request(SENSIBLE_PROMPT, r["instruction"], r["input"])[0]["content"]: r["sensible"],
                request(CORRECT_PROMPT, r["instruction"], r["input"], r["output"])[0]["content"]: r["good"]}

    class Perfect:
        def generate(self, requests, sampling):
            by_prompt = {q: label for r in labelled for q, label in labels_by_question(r).items()}
            return [Completion("yes" if by_prompt[q[0]["content"]] else "no", 1, 1) for q in requests]  # fmt: skip

    assert verdict_agreement(Perfect(), labelled) == {"instruction": 1.0, "output": 1.0, "unparsed": 0.0}


@pytest.mark.slow
def test_verdict_agreement_with_the_strongest_local_model():
    """The judge must beat both constant answers, "yes" and "no" to everything, on each question.
    Measured (README): the two-question prompt it replaced scored exactly "yes" to everything."""
    from synth.llm import make_backend

    try:
        llm = make_backend(LLMSpec(engine="llama.cpp", model="qwen2.5-coder-1.5b", batch_size=8, threads=2))
        llm.load()
    except Exception as exc:  # noqa: BLE001 - not installed here (SYNTH_SKIP_QWEN=1, no llama-cpp-python)
        pytest.skip(f"qwen2.5-coder-1.5b through llama.cpp is not available: {exc}")
    labelled = labelled_records()
    agreement = verdict_agreement(llm, labelled)
    print(f"verdict agreement, qwen2.5-coder-1.5b, {len(labelled)} held-out records: {agreement}")
    for question, label in (("instruction", "sensible"), ("output", "good")):
        yes = sum(r[label] for r in labelled) / len(labelled)
        assert agreement[question] > max(yes, 1 - yes), (question, agreement[question], yes)
