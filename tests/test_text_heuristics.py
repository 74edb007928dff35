"""text_heuristics: each Gopher rule fires on a text made to break it and not on a good paragraph."""

from __future__ import annotations

import inspect
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from filters.quality.heuristics import TextHeuristics, TextHeuristicsConfig
from synth.stage import DROP_REASON, StageContext

GOOD = (
    "The Danube is the second-longest river in Europe. It rises in the Black Forest of Germany and flows "
    "east for some 2,850 km, through ten countries, before it empties into the Black Sea. Vienna, Budapest "
    "and Belgrade stand on its banks, and it has long been a road for trade and for armies alike."
)

ELLIPSIS_LINES = (
    "We waited a long time at the corner for the bus...\nIt never came, and the rain got heavier and "
    "heavier...\nSo in the end we walked home together"
)
NO_STOP_WORDS = (
    "Quantum flux capacitors generate temporal displacement fields across multiple dimensions while "
    "engineers monitor reactor output levels carefully during experimental trials inside underground "
    "laboratories near Geneva today"
)


def heuristics(texts: list[str], column: str = "output", **config) -> pa.Table:
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="text_heuristics", stage_index=1,
                       output_dir=Path("."))  # fmt: skip
    stage = TextHeuristics(TextHeuristicsConfig(**config), ctx)
    return stage.process(pa.table({column: pa.array(texts, pa.string())}))


def reasons(texts: list[str], **config) -> list[str | None]:
    return heuristics(texts, **config)[DROP_REASON].to_pylist()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (GOOD, None),
        ("", "empty_text"),
        ("  \n\t  \n", "empty_text"),
        ("a b c d e f g h", "mean_word_length_low"),
        ("Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
         "mean_word_length_high"),
        ("#ai #ml #data rocks today with friends and family", "too_many_hashes"),
        ("Well... I think... maybe... we could go to the park later today", "too_many_ellipses"),
        ("The totals were 12 34 56 78 90 and 11", "too_many_non_alpha_words"),
        ("- apples are red\n- bananas are yellow\n- grapes are purple", "too_many_bullet_lines"),
        (ELLIPSIS_LINES, "too_many_ellipsis_lines"),
        ("Buy now and save.\nBuy now and save.\nBuy now and save.\nThe offer ends on Friday.", "duplicated_lines"),
        ("the cat " * 30, "repeated_2gram"),
        (GOOD + " Remember to water the tomatoes every single morning." * 2, "duplicated_5gram"),
        (NO_STOP_WORDS, "too_few_stop_words"),
        ("Red, yellow, blue.", None),  # short: no stop words needed
        ("Czech is not a language, but a language is a language spoken by Czechs.", None),  # short: one pair repeats
        # qwen2.5-coder-1.5b's right answers under 50 words, which the top n-gram rules dropped
        ("A solid has a fixed shape and volume, a liquid has a fixed volume but a variable shape, and a gas "
         "has no fixed shape or volume.", None),
        ("Correlation is a statistical measure that indicates the extent to which two variables change together. "
         "It ranges from -1 to 1, where -1 indicates a perfect negative correlation, 1 indicates a perfect "
         "positive correlation, and 0 indicates no correlation.", None),
        ("A verb is a word that describes an action, while a noun is a word that refers to a person, place, "
         "thing, or idea.", None),
    ],
)  # fmt: skip
def test_each_rule(text, reason):
    assert reasons([text]) == [reason]


def test_word_bounds_come_from_the_config():
    assert reasons([GOOD], min_words=60) == ["too_few_words"]
    assert reasons([GOOD], max_words=50) == ["too_many_words"]
    assert reasons(["a b c d e f g h"], min_mean_word_length=None) == [None]


def test_a_very_long_text_is_measured_quickly():
    text = GOOD * 2500  # ~135,000 words
    started = time.perf_counter()
    out = heuristics([text])
    assert out[DROP_REASON].to_pylist() == ["too_many_words"]
    assert out["word_count"].to_pylist()[0] > 100_000
    assert time.perf_counter() - started < 10


def test_non_latin_scripts_are_measured_without_error():
    russian = "Дунай протекает через десять стран и впадает в Чёрное море, а на его берегах стоят столицы."
    chinese = "多瑙河是欧洲第二长的河流，流经十个国家，最后注入黑海。"
    arabic_and_emoji = "مرحبا بالعالم، هذا نص عربي للاختبار 😀🎉"
    out = heuristics([russian, chinese, arabic_and_emoji])
    assert out[DROP_REASON].to_pylist()[0] is None
    assert out[DROP_REASON].to_pylist()[2] is None
    # Han counts one character as a word, so English word-length bounds drop it: a stated limit.
    assert out[DROP_REASON].to_pylist()[1] == "mean_word_length_low"
    assert out["word_count"].to_pylist() == [16, 24, 6]


def test_scores_are_typed_columns_with_nulls_for_blank_text():
    out = heuristics([GOOD, " "])
    assert out.schema.field("word_count").type == pa.int32()
    assert out.schema.field("dup_5gram_char_frac").type == pa.float32()
    assert out["word_count"].to_pylist() == [54, 0]
    assert out["mean_word_length"].to_pylist()[1] is None
    expected = {f"top_{n}gram_char_frac" for n in (2, 3, 4)} | {f"dup_{n}gram_char_frac" for n in range(5, 11)}
    assert expected <= set(out.column_names)


def test_text_columns_are_joined():
    table = pa.table({"instruction": ["List the primary colours."], "output": ["- red\n- yellow\n- blue"]})
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="h", stage_index=1, output_dir=Path("."))
    alone = TextHeuristics(TextHeuristicsConfig(), ctx).process(table)
    joined = TextHeuristics(TextHeuristicsConfig(text_columns=["instruction", "output"]), ctx).process(table)
    assert alone[DROP_REASON].to_pylist() == ["too_many_bullet_lines"]
    assert joined[DROP_REASON].to_pylist() == [None]  # 3 of 4 lines are bullets


def test_missing_text_column_is_named():
    with pytest.raises(ValueError, match="set text_columns"):
        heuristics(["x"], column="body")


# ---------------------------------------------------------------- rules that suit the answer's shape

DEDENT_SOURCE = inspect.getsource(textwrap.dedent)  # real code nobody here wrote, with # comments


def records(pairs: list[tuple[str, str]], **config) -> pa.Table:
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="text_heuristics", stage_index=1,
                       output_dir=Path("."))  # fmt: skip
    table = pa.table({"instruction": [i for i, _ in pairs], "output": [o for _, o in pairs]})
    return TextHeuristics(TextHeuristicsConfig(**config), ctx).process(table)


@pytest.mark.parametrize(
    ("instruction", "output", "shape", "reason"),
    [
        # correct answers from a real run that the prose rules dropped
        ("What is 7 times 11?", "77", "math", None),
        ("Give the answer to life, the universe and everything.", "42", "label", None),
        ("Solve for x: 2 + x = 5.", "x = 3", "math", None),
        ("Convert 25 degrees Celsius to Fahrenheit.", "F = 25 x 9/5 + 32 = 77", "math", None),
        ("Calculate 15% of 80.", "15% of 80 is 12.", "math", None),
        ("Is the review positive or negative? 'Loved it.'", "Positive", "label", None),
        # ... and answers of qwen2.5-coder-1.5b that the prose rules dropped: a long label, a numbered list
        ("Identify the type of sentence. (input: What is your name?)", "interrogative", "label", None),
        ("Suggest three descriptive adjectives for a scenic mountain.", "1. Elegant\n2. Majestic\n3. Serene", "prose",
         None),
        ("Write a Python function that removes common leading whitespace.", DEDENT_SOURCE, "code", None),
        # prose is held to the prose rules still
        ("Describe your weekend.", "a b c d e f g h", "prose", "mean_word_length_low"),
        ("Describe the sales report.", "The totals were 12 34 56 78 90 and 11", "prose", "too_many_non_alpha_words"),
        ("Describe the sales report.", "1. 12\n2. 34\n3. 56 78", "prose", "too_many_non_alpha_words"),
        ("Name the colour.", "bluebluebluebluebluebluebluebluebluebluebluebluebluebluebluebluebluebluebluebluebl",
         "prose", "mean_word_length_high"),
        ("Tell me about rivers.", GOOD, "prose", None),
        # the rules a shape keeps still catch degenerate answers of that shape
        ("Write a Python function that removes common leading whitespace.", DEDENT_SOURCE * 3, "code",
         "duplicated_5gram"),
        ("What is 2 + 2?", "", "math", "empty_text"),
    ],
)  # fmt: skip
def test_rules_follow_the_shape_of_the_answer(instruction, output, shape, reason):
    out = records([(instruction, output)])
    assert out["answer_shape"].to_pylist() == [shape]
    assert out[DROP_REASON].to_pylist() == [reason]


def test_shape_aware_off_applies_every_rule_as_gopher_does():
    out = records([("What is 7 times 11?", "77"), ("Solve for x: 2 + x = 5.", "x = 3")], shape_aware=False)
    assert out[DROP_REASON].to_pylist() == ["too_many_non_alpha_words", "mean_word_length_low"]
    assert set(out["answer_shape"].to_pylist()) == {"prose"}
