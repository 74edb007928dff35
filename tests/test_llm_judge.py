"""llm_judge: the grade parser on the shapes judges answer in, and the stage on the real local model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from filters.quality.llm_judge import LLMJudge, LLMJudgeConfig, judge_agreement, parse_judgement
from synth.spec import LLMSpec
from synth.stage import DROP_REASON, StageContext


@pytest.mark.parametrize(
    ("answer", "score", "reasons"),
    [
        ("Score: 7\nReasons: Correct but brief.", 7.0, "Correct but brief."),
        ("**Score:** 8/10\n**Reasons:** Clear and complete.", 8.0, "Clear and complete."),
        ("Rating: 3 - the answer is off-topic.", 3.0, "Rating: 3 - the answer is off-topic."),
        ("I would give this 9 out of 10 because it is accurate.", 9.0,
         "I would give this 9 out of 10 because it is accurate."),
        ("  6.5 \n", 6.5, "6.5"),
        ("score = 10. Reason: perfect", 10.0, "perfect"),
        ("Score: 0\nReasons: empty", None, "empty"),  # outside 1..10
        ("Score: 11", None, "Score: 11"),
        ("The response is good and helpful.", None, "The response is good and helpful."),
        ("", None, ""),
    ],
)  # fmt: skip
def test_parse_judgement(answer, score, reasons):
    assert parse_judgement(answer) == (score, reasons)


def test_prompt_needs_both_slots():
    with pytest.raises(ValueError, match="must contain"):
        LLMJudgeConfig(prompt="Rate {response}")


class FixedAnswers:
    """A stand-in client that answers each request with the next canned text."""

    def __init__(self, answers: list[str]):
        self.answers, self.requests = list(answers), []

    def generate(self, requests, sampling):
        from synth.llm import Completion

        self.requests += requests
        return [Completion(self.answers.pop(0), 1, 1) for _ in requests]


def judge(rows: list[tuple[str, str]], llm, **config) -> pa.Table:
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="llm_judge", stage_index=1,
                       output_dir=Path("."), llm_specs={"default": LLMSpec()})  # fmt: skip
    stage = LLMJudge(LLMJudgeConfig(**config), ctx)
    stage.llm = llm
    table = pa.table({"instruction": [r[0] for r in rows], "input": [""] * len(rows), "output": [r[1] for r in rows]})
    return stage.process(table)


def test_drop_reasons_and_columns():
    rows = [("Name a river.", "The Nile."), ("Name a river.", "Bananas."), ("Name a river.", "Hmm."),
            ("Name a river.", "   ")]  # fmt: skip
    llm = FixedAnswers(["Score: 9\nReasons: right", "Score: 2\nReasons: wrong", "no idea"])
    out = judge(rows, llm)
    assert out["judge_score"].to_pylist() == [9.0, 2.0, None, None]
    assert out["judge_reasons"].to_pylist() == ["right", "wrong", "no idea", None]
    assert out[DROP_REASON].to_pylist() == [None, "judge_score_low", "judge_unparsed", "empty_text"]
    assert len(llm.requests) == 3  # the blank response is not sent
    assert "Name a river." in llm.requests[0][0]["content"] and "The Nile." in llm.requests[0][0]["content"]


def test_unparsed_grades_can_be_kept():
    out = judge([("Name a river.", "Hmm.")], FixedAnswers(["no idea"]), on_unparsed="keep")
    assert out[DROP_REASON].to_pylist() == [None] and out["judge_score"].to_pylist() == [None]


def test_braces_in_texts_do_not_break_the_prompt():
    llm = FixedAnswers(["Score: 5"])
    judge([("Format {response} as JSON: {}", "{\"a\": 1}")], llm)
    content = llm.requests[0][0]["content"]
    assert "Format {response} as JSON: {}" in content and '{"a": 1}' in content


def test_real_model_output_parses(tmp_path):
    """The embedded SmolLM2 answers the rubric; what it says parses into a grade or a clear reason."""
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="llm_judge", stage_index=1,
                       output_dir=tmp_path, llm_specs={"default": LLMSpec(threads=1, batch_size=4)})  # fmt: skip
    stage = LLMJudge(LLMJudgeConfig(sampling={"max_tokens": 24}), ctx)
    stage.setup()
    table = pa.table({
        "instruction": ["What is the capital of France?", "Name a primary colour."],
        "input": ["", ""],
        "output": ["The capital of France is Paris.", "Paris is a nice city with many bridges."],
    })  # fmt: skip
    out = stage.process(table)
    scores, drops = out["judge_score"].to_pylist(), out[DROP_REASON].to_pylist()
    for score, reason, reasons in zip(scores, drops, out["judge_reasons"].to_pylist()):
        assert reasons  # the judge's words are kept either way
        assert (score is None and reason == "judge_unparsed") or (1 <= score <= 10 and reason in (None, "judge_score_low"))
    print("real judge:", list(zip(scores, out["judge_reasons"].to_pylist())))


# ---------------------------------------------------------------- measuring data, not filtering it


def test_min_score_null_measures_without_dropping():
    rows = [("Name a river.", "The Nile."), ("Name a river.", "Bananas.")]
    out = judge(rows, FixedAnswers(["Score: 9", "Score: 2"]), min_score=None)
    assert out["judge_score"].to_pylist() == [9.0, 2.0] and out[DROP_REASON].to_pylist() == [None, None]


def test_a_fixed_share_is_judged_by_id():
    rows = [(f"Name river {i}.", f"River {i}.") for i in range(200)]
    llm = FixedAnswers(["Score: 8"] * 200)
    first = judge(rows, llm, sample_share=0.25)["judge_score"].to_pylist()
    again = judge(rows, FixedAnswers(["Score: 8"] * 200), sample_share=0.25)["judge_score"].to_pylist()
    judged = [i for i, score in enumerate(first) if score is not None]
    assert 25 <= len(judged) <= 75 and judged == [i for i, s in enumerate(again) if s is not None]
    assert len(llm.requests) == len(judged)


def labelled_answers() -> list[tuple[str, str, bool]]:
    """20 hand-labelled (instruction, response, good) pairs: 10 right, 10 wrong, echoed, refused or looping."""
    lines = (Path(__file__).parent / "data" / "judge_labelled.jsonl").read_text().splitlines()
    return [(r["instruction"], r["response"], r["good"]) for r in map(json.loads, lines)]


def test_agreement_counts_matches_and_unparsed_grades():
    labelled = labelled_answers()
    assert len(labelled) == 20 and sum(good for *_, good in labelled) == 10
    perfect = FixedAnswers(["Score: 9" if good else "Score: 2" for *_, good in labelled])
    assert judge_agreement(perfect, labelled)[0] == 1.0
    mute = FixedAnswers(["no idea"] * 20)
    assert judge_agreement(mute, labelled) == (0.0, [None] * 20)


@pytest.mark.slow
def test_rubric_agreement_with_the_strongest_local_model():
    """The rubric's grades from qwen2.5-coder-1.5b against the hand-labelled answers."""
    from gguf_client import GGUFClient

    agreement, scores = judge_agreement(GGUFClient("qwen2.5-coder-1.5b"), labelled_answers(), max_tokens=8)
    print(f"rubric agreement, qwen2.5-coder-1.5b: {agreement:.2f}; scores {scores}")
    # Measured 0.60 (12 of 20) here: a floor that catches a broken rubric or parser, one grade of
    # slack for another CPU build; far from what a useful judge needs (the rubric needs work).
    assert agreement >= 0.55
