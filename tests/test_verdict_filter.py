"""verdict_filter: the judge's two verdicts become columns and drop reasons (the judge scripted here;
its agreement with a real model is measured in tests/test_judge_report.py)."""

from __future__ import annotations

from pathlib import Path

from filters.quality.verdict_filter import VerdictFilter, VerdictFilterConfig
from generators.instruct.records import make_record, to_table
from synth.llm import Completion, LLMClient
from synth.stage import DROP_REASON, StageContext


class ScriptedJudge(LLMClient):
    """Calls "Write a Go function ..." not sensible and the answer "8" incorrect; mumbles about "mumble"."""

    model_id = "scripted-judge"

    def __init__(self):
        self.asked = {"Correct:": 0, "Sensible:": 0}

    def generate(self, requests, sampling):
        for r in requests:
            self.asked[r[-1]["content"].rstrip().rsplit("\n", 1)[-1]] += 1

        def answer(prompt: str) -> str:
            record = prompt.rsplit("Instruction:", 1)[-1]
            if "mumble" in record:
                return "maybe"
            if prompt.rstrip().endswith("Sensible:"):
                return "no" if "Go function" in record else "yes"
            return "no" if "Answer: 8" in record else "yes"

        return [Completion(answer(r[-1]["content"]), 10, 1) for r in requests]


def test_verdicts_become_columns_and_drop_reasons():
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="verdict_filter", stage_index=3,
                       output_dir=Path("."))  # fmt: skip
    rows = [("Name the capital of France.", "Paris"), ("Write a Go function that adds.", "func add..."),
            ("What is 3 + 4?", "8"), ("Say mumble.", "mumble")]  # fmt: skip
    table = to_table(make_record(generator="self_instruct", run_id="r", seed=0, model="m", instruction=i, output=o)
                     for i, o in rows)  # fmt: skip
    stage = VerdictFilter(VerdictFilterConfig(), ctx)
    stage.llm = ScriptedJudge()  # what setup() would take from the spec's `llm:` section
    out = stage.process(table)
    assert out[DROP_REASON].to_pylist() == [None, "judged_not_sensible", "judged_incorrect", None]
    # The instruction of an output judged incorrect is not asked about: its verdict stays null.
    assert out["judged_sensible"].to_pylist() == [True, False, None, None]
    assert out["judged_correct"].to_pylist() == [True, True, False, None]
    assert stage.llm.asked == {"Correct:": 4, "Sensible:": 3}


def test_only_the_questions_asked_for_are_asked():
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="verdict_filter", stage_index=3,
                       output_dir=Path("."))  # fmt: skip
    rows = [("Write a Go function that adds.", "func add..."), ("What is 3 + 4?", "8")]
    table = to_table(make_record(generator="self_instruct", run_id="r", seed=0, model="m", instruction=i, output=o)
                     for i, o in rows)  # fmt: skip
    for questions, asked, reasons in [
        (["correct"], {"Correct:": 2, "Sensible:": 0}, [None, "judged_incorrect"]),
        (["sensible"], {"Correct:": 0, "Sensible:": 2}, ["judged_not_sensible", None]),
    ]:
        stage = VerdictFilter(VerdictFilterConfig(questions=questions), ctx)
        stage.llm = ScriptedJudge()
        out = stage.process(table)
        assert stage.llm.asked == asked
        assert out[DROP_REASON].to_pylist() == reasons
        assert out["judged_correct" if questions == ["sensible"] else "judged_sensible"].to_pylist() == [None, None]
