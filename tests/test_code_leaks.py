"""No leaked answers: doctest examples and result comments are cut from the source a prompt shows,
and a prompt that still shows its answer is found (generators.code.leaks)."""

from __future__ import annotations

import ast

from generators.code.corpus import function_candidates, stdlib_folder
from generators.code.leaks import answer_in_prompt, shown_source
from generators.code.prompts import render

SOURCE = '''import re

def squeeze(text: str, sep: str = " ") -> str:
    """Collapse runs of whitespace.

    Examples::

        >>> squeeze("a   b")
        'a b'
        >>> squeeze(
        ...     "x  y", sep="-")
        'x-y'

    Leading and trailing spaces go too.
    """
    # squeeze(" a ") -> 'a'
    words = re.split(r"\\s+", text.strip())  # one or more spaces
    return sep.join(words)  # == 'a b' for "a  b"
'''


def predict_prompt(source: str, call: str) -> str:
    return render("predict_output", source=source, call=call)


def test_examples_and_result_comments_are_cut_and_the_code_stays():
    shown = shown_source(SOURCE, "squeeze")
    assert ">>>" not in shown and "'a b'" not in shown and "'x-y'" not in shown and "Examples" not in shown
    assert "-> 'a'" not in shown and "==" not in shown
    assert "Collapse runs of whitespace." in shown and "Leading and trailing spaces go too." in shown
    assert "# one or more spaces" in shown, "a comment that shows no result stays"
    assert ast.dump(ast.parse(shown).body[1].body[-2:][1]) == ast.dump(ast.parse(SOURCE).body[1].body[-1])


def test_a_source_without_examples_is_shown_as_it_is():
    plain = "def twice(x):\n    # double it\n    return 2 * x\n"
    assert shown_source(plain, "twice") == plain


def test_a_stdlib_doctest_leaves_the_prompt():
    """pickle.decode_long's docstring shows decode_long(b'\\xff\\x00') == 255, among others."""
    text = (stdlib_folder() / "pickle.py").read_text()
    (row,) = [r for r in function_candidates(text, "pickle") if r["name"] == "decode_long"]
    call = "decode_long(b'\\xff\\x00')"
    assert answer_in_prompt("predict_output", predict_prompt(row["source"], call), "255", call, "decode_long",
                            row["source"])  # fmt: skip
    shown = shown_source(row["source"], "decode_long")
    assert not answer_in_prompt("predict_output", predict_prompt(shown, call), "255", call, "decode_long", shown)


def test_what_still_leaks_is_found():
    call = "squeeze('a  b')"

    def leaks(source: str, answer: str = "'a b'") -> bool:
        return answer_in_prompt("predict_output", predict_prompt(source, call), answer, call, "squeeze", source)

    base = "def squeeze(text):\n    {doc}\n    return ' '.join(text.split())\n"
    assert not leaks(base.format(doc='"""Collapse whitespace."""'))
    assert leaks(base.format(doc='"""For example squeeze("a  b") gives it."""')), "the call itself, in other quotes"
    assert leaks(base.format(doc='"""Collapse whitespace.\n\n    "a b"\n    """')), "the value alone on a line"
    assert leaks(base.format(doc='"""Collapse whitespace: "a  b" -> "a b"."""')), "the value after an arrow"
    assert not leaks(base.format(doc='"""Return 0 when empty."""'), "0"), "a rule in words is not this input's answer"
    assert not leaks("def squeeze(text):\n    return 0 if not text else 1\n", "0"), "code is not a leak"


def test_a_function_shown_whole_leaks_as_an_answer():
    source = "def f(x):\n    return x + 1"
    assert answer_in_prompt("complete_function", f"Complete:\n{source}\n", source, "f(1)", "f", source)
    assert not answer_in_prompt("complete_function", "Complete:\ndef f(x):\n", source, "f(1)", "f", source)
