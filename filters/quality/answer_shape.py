"""What shape an answer has, so that rules written for prose are not applied to numbers or code.

Gopher's word-shape rules assume running English: "77" is all non-alphabetic words, "x = 3"
averages one letter per word, and Python has few stop words and many `#`. An answer is

- `code` when it looks like code (a fence, several code-like lines) or the task asks for code;
- `math` when it holds an equation or arithmetic, or the task asks for a number or a calculation;
- `label` when it is one line of at most `LABEL_MAX_WORDS` words of at most `LABEL_MAX_WORD_CHARS`
  characters ("Positive", "Yes", "42", "interrogative");
- `prose` otherwise.

The task is read from the instruction (and input) columns where the data has them.
`filters.quality.heuristics` leaves out, per shape, the rules that the shape breaks by nature.
"""

from __future__ import annotations

import re
from typing import Literal

Shape = Literal["prose", "math", "code", "label"]

LABEL_MAX_WORDS = 3
LABEL_MAX_WORD_CHARS = 20
"""Longer than any English label ("counterproductive" has 17 letters): a run-on token is prose."""

_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |return\b|for .*:\s*$|while .*:\s*$|if .*:\s*$|elif |else:|"
    r"#include|SELECT |INSERT |UPDATE |CREATE TABLE|function\b|const |let |var |public |private |\}|\{|"
    r"print\(|console\.log|[A-Za-z_][\w.]*\s*=\s*[^=].*[;)\]]\s*$|.*;\s*$)",
    re.MULTILINE | re.IGNORECASE,
)
_EQUATION = re.compile(
    r"\d\s*(?:[-+*/×÷^=<>]|\bx\b)\s*\(?-?\d|\b[a-zA-Z]\s*=\s*-?[\d(]|\d\s*%|\b(?:sqrt|log|sin|cos)\s*\(", re.IGNORECASE
)
_ASKS_CODE = re.compile(
    r"\b(?:write|implement|create|complete|fix|debug|refactor|optimi[sz]e|explain|what does)\b[^.?!]*"
    r"\b(?:function|program|script|code|snippet|query|regex|regular expression|class|method)\b"
    r"|\b(?:python|javascript|typescript|c\+\+|sql|bash|html|css|rust|golang|ruby|php)\b",
    re.IGNORECASE,
)
_ASKS_NUMBER = re.compile(
    r"\b(?:calculate|compute|solve|evaluate|simplify|how many|how much|how far|how old|sum of|product of|"
    r"average|mean of|median|percent(?:age)?|equation|multiply|divide|subtract|add up|factorial|"
    r"square root|derivative|integral|arithmetic|number of|count the|total)\b"
    r"|\bconvert\b[^.?!]*\d|\bwhat is\s+-?\d|\d\s*(?:[-+*/×÷^]|times|plus|minus|divided by|multiplied by)\s*\d",
    re.IGNORECASE,
)


def holds_code(answer: str) -> bool:
    """A fence or at least one line that reads as code (`def `, `SELECT `, `x = f(y);`...)."""
    return "```" in answer or _CODE_LINE.search(answer) is not None


def answer_shape(answer: str, task: str = "", words: int | None = None) -> Shape:
    """The shape of `answer`, given the `task` (instruction and input) that asked for it; `words` is
    its word count where the caller has counted them (Han text has one word per character)."""
    if "```" in answer or len(_CODE_LINE.findall(answer)) >= 2 or (task and _ASKS_CODE.search(task)):
        return "code"
    if _EQUATION.search(answer) or (task and _ASKS_NUMBER.search(task)):
        return "math"
    one_line = "\n" not in answer.strip() and max(map(len, answer.split()), default=0) <= LABEL_MAX_WORD_CHARS
    if (len(answer.split()) if words is None else words) <= LABEL_MAX_WORDS and one_line:
        return "label"
    return "prose"


SKIPPED_RULES: dict[Shape, frozenset[str]] = {
    "prose": frozenset(),
    "label": frozenset({"mean_word_length_low", "mean_word_length_high", "too_many_non_alpha_words"}),
    "math": frozenset({
        "mean_word_length_low", "mean_word_length_high", "too_many_non_alpha_words", "too_few_stop_words",
        "repeated_2gram", "repeated_3gram", "repeated_4gram",
    }),
    "code": frozenset({
        "mean_word_length_low", "mean_word_length_high", "too_many_non_alpha_words", "too_few_stop_words",
        "too_many_hashes", "too_many_bullet_lines", "duplicated_lines",
        "repeated_2gram", "repeated_3gram", "repeated_4gram",
    }),
}  # fmt: skip
"""Rules a shape breaks by nature. A label may be one long word ("interrogative"), and a run-on token
is no label (`LABEL_MAX_WORD_CHARS`);
math keeps the long repeated n-gram rules (a looping derivation)
and code the 5- to 10-gram ones (a model repeating a block); both keep the length and ellipsis rules."""
