"""instruct_checks: each check on a row made for it, thresholds from the config, scores as columns."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from filters.quality.instruct_checks import InstructChecks, InstructChecksConfig
from generators.instruct.records import make_record, to_table
from synth.stage import DROP_REASON, StageContext


def check(rows: list[tuple[str, str]], upstream: list[str | None] | None = None, **config) -> pa.Table:
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="instruct_checks", stage_index=2,
                       output_dir=Path("."))  # fmt: skip
    reasons = upstream or [None] * len(rows)
    table = to_table(
        make_record(generator="self_instruct", run_id="r", seed=0, model="m", instruction=ins, output=out,
                    drop_reason=reason)
        for (ins, out), reason in zip(rows, reasons)
    )  # fmt: skip
    return InstructChecks(InstructChecksConfig(**config), ctx).process(table)


GOOD = ("Name three rivers in Europe.", "The Danube, the Rhine and the Loire.")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (GOOD, None),
        (("Name three rivers in Europe.", "   "), "empty_output"),
        (("Rivers?", "The Danube."), "instruction_too_short"),
        (("Explain " + "very " * 300 + "clearly.", "Sure."), "instruction_too_long"),
        (("Write a long essay about rivers.", "word " * 1001), "output_too_long"),
        (("Tell me a secret about rivers.", "As an AI, I don't have secrets."), "refusal"),
        (("Name three rivers in Europe.", "Name three rivers in Europe!"), "echoes_instruction"),
        (("Write a persuasive essay about protecting rivers.", "Rivers matter."), "too_short_for_request"),
        (("Explain in detail how a river delta forms.", "Sediment settles."), "too_short_for_request"),
        (("Write a sentence about a story you like.", "I love The Hobbit."), None),
        # qwen2.5-coder-1.5b's Self-Instruct instances of code tasks: the result, or a description
        (("Write a JavaScript function that finds the largest number in an array.", "8"), "no_code_for_code_request"),
        (("Write a C# function that finds the longest word in a string.",
          'The function "FindLongestWord" takes a string as input and returns the longest word.'),
         "no_code_for_code_request"),
        (("Write a SQL query that counts the customers.", "SELECT COUNT(*) FROM customers;"), None),
        (("Write a Python function that doubles a number.", "```python\ndef double(x):\n    return 2 * x\n```"),
         None),
        (("Explain what a Python function is.", "A named block of code that runs when called."), None),
        (("Write a list of activities for a class.", "1. Reading\n2. Writing\n3. Games"), None),
        # qwen2.5-coder-1.5b's Self-Instruct records with no input, kept by its own judge: the text
        # the task works on is missing, so the answer is made up
        (("Make the sentence more natural and flow more smoothly.", '"The quick brown fox jumps over the lazy dog."'),
         "missing_input"),
        (("Identify the genre of the text (fiction, non-fiction, biography, etc.).",
          "The genre of the text is non-fiction."), "missing_input"),
        (("Evaluate the logical reasoning in a given argument and provide a summary of its strengths and weaknesses.",
          "The task requires analyzing a logical argument and providing a summary of its strengths and weaknesses."),
         "missing_input"),
        (("Describe the main character of the book in two sentences.",
          "The main character of the book is a young girl named Lily who lives in a small town."), "missing_input"),
        (("Describe the atmosphere of the room.", "The room was filled with a warm, cozy atmosphere."),
         "missing_input"),
        # ... and those that hold their text, name an argument, or ask for code or a story: kept
        (('Who wrote the book "Pride and Prejudice"?', "Jane Austen."), None),
        (("Solve the puzzle to find the number that is both a cube and a square.", "1"), None),
        (('Identify the subject and object in the following sentence: "He took the book out of the library.',
          "Subject: He\nObject: the book"), None),
        (("Write a function that finds the shortest word in a given sentence.",
          "```python\ndef shortest(sentence):\n    return min(sentence.split(), key=len)\n```"), None),
        (("Tell whether a given number is prime.", "A number is prime when it has exactly two divisors."), None),
        (("Explain the difference between active and passive voice.",
          "In active voice the subject acts; in passive voice it is acted upon."), None),
    ],
)
def test_each_check(row, reason):
    out = check([row])
    assert out[DROP_REASON].to_pylist() == [reason]


def test_a_text_given_as_input_is_not_missing():
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="instruct_checks", stage_index=2,
                       output_dir=Path("."))  # fmt: skip
    rows = [("She is reading a book.", None), ("", "missing_input")]
    table = to_table(make_record(generator="self_instruct", run_id="r", seed=0, model="m", input=inp,
                                 instruction="Rewrite the sentence in the past tense.", output="She was reading a book.")
                     for inp, _ in rows)  # fmt: skip
    out = InstructChecks(InstructChecksConfig(), ctx).process(table)
    assert out[DROP_REASON].to_pylist() == [reason for _, reason in rows]
    off = InstructChecks(InstructChecksConfig(refers_to_input_pattern=None), ctx).process(table)
    assert off[DROP_REASON].to_pylist() == [None, None]


def test_scores_are_typed_columns():
    out = check([GOOD])
    assert out.schema.field("instruction_words").type == pa.int32()
    assert out.schema.field("echo_rouge_l").type == pa.float32()
    assert out["instruction_words"].to_pylist() == [5] and out["output_words"].to_pylist() == [7]
    assert out["echo_rouge_l"].to_pylist() == [0.0]  # no word in common


def test_thresholds_come_from_the_config():
    assert check([GOOD], max_output_words=5)[DROP_REASON].to_pylist() == ["output_too_long"]
    assert check([GOOD], min_output_words=10)[DROP_REASON].to_pylist() == ["output_too_short"]
    assert check([GOOD], refusal_phrases=["danube"])[DROP_REASON].to_pylist() == ["refusal"]
    echo = ("Name three rivers in Europe.", "Name three rivers in Europe: the Danube, the Rhine and the Loire.")
    assert check([echo])[DROP_REASON].to_pylist() == [None]
    assert check([echo], echo_threshold=0.5)[DROP_REASON].to_pylist() == ["echoes_instruction"]


def test_long_form_requests_are_flagged():
    out = check([GOOD, ("Write a short story about a river.", "word " * 40)])
    assert out["asks_long_form"].to_pylist() == [False, True]
    assert out[DROP_REASON].to_pylist() == [None, None]
    essay = ("Write an essay on rivers.", "word " * 20)
    assert check([essay], long_form_min_words=10)[DROP_REASON].to_pylist() == [None]


def test_an_upstream_drop_reason_is_kept():
    out = check([GOOD, GOOD], upstream=["rouge_similar", None])
    assert out[DROP_REASON].to_pylist() == ["rouge_similar", None]
