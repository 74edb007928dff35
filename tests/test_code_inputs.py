"""generators.code.calls and .inputs: literal calls out of model text, and the fallback that needs no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

from generators.code.calls import CallError, Signature, format_call, is_literal, parse_call
from generators.code.inputs import (
    DOCSTRING, HYPOTHESIS, CodeInputs, CodeInputsConfig, doctest_calls, function_node, proposed_calls,
)  # fmt: skip
from generators.code.strategies import hypothesis_calls
from synth.llm import Completion
from synth.llm.base import LLMClient
from synth.stage import StageContext

SOURCE = '''
def pad(text: str, width: int = 8, *, fill: str = " ") -> str:
    """Pad text on the left.

    >>> pad("ab", 4)
    '  ab'
    >>> pad("abc", width=5, fill="*")
    '**abc'
    """
    return fill * max(width - len(text), 0) + text
'''

# What a weak model writes: chatter, numbering, markdown, a stray call of something else, an
# expression that is not a literal, a call with a missing argument, and a duplicate.
COMPLETION = """Sure! Here are some calls:
1. pad("hello", 10)
2. `pad('x', width=3, fill='-')`  # pads with dashes
- pad(text="abc")
print(pad("a", 2))
pad(os.getcwd(), 5)
pad(__import__('os').system('touch /tmp/pwned'))
pad()
pad("hello", 10)
notpad("a")
pad("unterminated
"""


def fn() -> ast.FunctionDef:
    return function_node(SOURCE, "pad")


def test_proposed_calls_keeps_only_valid_literal_calls_in_canonical_form():
    calls = list(proposed_calls(COMPLETION, "pad", Signature.of(fn())))
    assert calls == [
        "pad('hello', 10)", "pad('x', width=3, fill='-')", "pad(text='abc')", "pad('a', 2)", "pad('hello', 10)"
    ]  # fmt: skip
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pad(1 + 2)", "literal arguments"), ("pad(*xs)", r"\*args"), ("other(1)", "expected a call of pad"),
        ("pad(", "not a Python expression"), ("pad(float('nan'))", "literal"),
    ],
)  # fmt: skip
def test_parse_call_says_why_it_refuses(text, message):
    with pytest.raises(CallError, match=message):
        parse_call(text, "pad")


def test_signature_checks_arity_and_keywords():
    sig = Signature.of(fn())
    sig.check(("a",), {"fill": "-"})
    wrong = [((), {}, "missing required argument"), (("a", 1, 2), {}, "at most 2"),
             (("a",), {"text": "b"}, "given twice"), (("a",), {"colour": 1}, "unknown keyword")]  # fmt: skip
    for args, kwargs, message in wrong:
        with pytest.raises(CallError, match=message):
            sig.check(args, kwargs)


def test_format_and_parse_round_trip():
    args, kwargs = (1.5, "a'b", b"\x00", [1, (2, 3)], {"k": {1, 2}}, None), {"flag": True}
    text = format_call("f", args, kwargs)
    assert parse_call(text, "f") == (args, kwargs)
    assert not is_literal(float("inf")) and not is_literal(set()) and not is_literal(frozenset({1}))


def test_doctests_become_calls():
    assert doctest_calls(fn(), Signature.of(fn())) == ["pad('ab', 4)", "pad('abc', width=5, fill='*')"]


def test_hypothesis_calls_follow_hints_and_defaults_and_are_seeded():
    calls = hypothesis_calls(fn(), Signature.of(fn()), 6, seed=3)
    assert len(calls) == 6 and len(set(calls)) == 6
    for call in calls:
        args, kwargs = parse_call(call, "pad")
        assert isinstance(args[0], str) and all(isinstance(v, int) for v in args[1:2])
        assert isinstance(kwargs.get("fill", " "), str)
    assert calls == hypothesis_calls(fn(), Signature.of(fn()), 6, seed=3)
    assert calls != hypothesis_calls(fn(), Signature.of(fn()), 6, seed=4)


def test_doctest_values_give_the_types_of_unhinted_parameters():
    node = function_node("def total(rows, scale):\n    return sum(r[0] for r in rows) * scale\n", "total")
    examples = [(([(1, "a"), (2, "b")], 2), {})]
    for call in hypothesis_calls(node, Signature.of(node), 6, seed=0, examples=examples):
        rows, scale = parse_call(call, "total")[0]
        assert isinstance(rows, list) and isinstance(scale, int)
        assert all(isinstance(r, tuple) and type(r[0]) is int and type(r[1]) is str for r in rows)


def test_names_decide_when_nothing_else_does():
    node = function_node("def f(text, n, items):\n    return text * n, items\n", "f")
    for call in hypothesis_calls(node, Signature.of(node), 5, seed=0):
        text, n, items = parse_call(call, "f")[0]
        assert isinstance(text, str) and isinstance(n, int) and isinstance(items, list)


class FakeLLM(LLMClient):
    """Answers every request with `answer` and remembers what it was asked."""

    model_id = "fake-model"

    def __init__(self, answer: str = COMPLETION):
        self.answer, self.requests, self.sampling = answer, [], None

    def generate(self, requests, sampling):
        self.requests, self.sampling = requests, sampling
        return [Completion(self.answer, 10, 10) for _ in requests]


def stage(**config) -> CodeInputs:
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="code_inputs", stage_index=1,
                       output_dir=Path("."))  # fmt: skip
    return CodeInputs(CodeInputsConfig(**config), ctx)


def test_model_calls_come_first_then_the_fallback_fills_up_to_n():
    inputs = stage(inputs_per_function=6)
    inputs.llm = FakeLLM()
    chosen = inputs.inputs_for({"function_id": "x", "name": "pad", "source": SOURCE}, COMPLETION)
    assert [origin for _, origin in chosen] == ["fake-model"] * 4 + [DOCSTRING] * 2
    assert len({call for call, _ in chosen}) == 6


def test_the_stage_asks_the_model_once_per_function_and_records_origins():
    inputs = stage(inputs_per_function=6)
    inputs.llm = FakeLLM()
    batch = pa.table({"function_id": ["a", "b"], "name": ["pad", "pad"], "source": [SOURCE, SOURCE]})
    out = inputs.process(batch)
    assert len(inputs.llm.requests) == 2 and "def pad(text: str" in inputs.llm.requests[0][-2]["content"]
    assert inputs.llm.sampling.stop == ("Function:", "\n\n")
    assert out.column("input_origins").to_pylist()[0] == ["fake-model"] * 4 + [DOCSTRING] * 2
    assert out.column("_drop_reason").to_pylist() == [None, None]


def test_the_model_goes_on_from_the_functions_name_and_its_first_call_counts():
    inputs = stage(inputs_per_function=6)
    inputs.llm = FakeLLM(answer="'zz', 1)\npad('q', width=2)\n")
    batch = pa.table({"function_id": ["a"], "name": ["pad"], "source": [SOURCE]})
    out = inputs.process(batch)
    request = inputs.llm.requests[0]
    assert request[-1] == {"role": "assistant", "content": "1. pad("}
    assert [m["role"] for m in request] == ["user", "assistant"] * 3, "two worked examples as earlier turns"
    assert "pad" not in str(request[:-2]), "the worked examples call other functions"
    calls = dict(zip(out.column("inputs").to_pylist()[0], out.column("input_origins").to_pylist()[0]))
    assert calls["pad('zz', 1)"] == calls["pad('q', width=2)"] == "fake-model"


class SeededLLM(FakeLLM):
    """Answers with one call whose argument is the sampling seed's index among the seeds it saw."""

    def __init__(self):
        super().__init__()
        self.seeds = []

    def generate(self, requests, sampling):
        self.seeds.append(sampling.seed)
        return [Completion(f"{len(self.seeds)}, 1)\n", 10, 10) for _ in requests]


def test_several_answers_per_function_are_sampled_with_their_own_seeds_and_pooled():
    inputs = stage(inputs_per_function=6, answers_per_function=3)
    inputs.llm = SeededLLM()
    out = inputs.process(pa.table({"function_id": ["a"], "name": ["pad"], "source": [SOURCE]}))
    assert len(set(inputs.llm.seeds)) == 3 and inputs.llm.seeds[0] == inputs.ctx.stage_seed
    calls = dict(zip(out.column("inputs").to_pylist()[0], out.column("input_origins").to_pylist()[0]))
    assert [c for c, o in calls.items() if o == "fake-model"] == ["pad(1, 1)", "pad(2, 1)", "pad(3, 1)"]


def test_without_the_worked_examples_the_request_is_the_prompt_and_the_begun_answer():
    request = stage(worked_examples=False).request({"name": "pad", "source": SOURCE})
    assert [m["role"] for m in request] == ["user", "assistant"]
    assert "def pad(text: str" in request[0]["content"] and request[-1]["content"] == "1. pad("


def test_without_a_model_the_fallback_alone_gives_cases():
    inputs = stage(llm=None, inputs_per_function=5)
    inputs.setup()
    chosen = inputs.inputs_for({"function_id": "x", "name": "pad", "source": SOURCE}, "")
    assert len(chosen) == 5 and {o for _, o in chosen} == {DOCSTRING, HYPOTHESIS}


def test_use_in_the_body_decides_when_there_are_no_hints():
    node = function_node(
        "def f(a, b, c, d, e):\n    if isinstance(e, bytes):\n        pass\n"
        "    return a.lower(), b.items(), [i for i in range(c)], d + 1, e\n", "f"
    )
    for call in hypothesis_calls(node, Signature.of(node), 5, seed=0):
        a, b, c, d, e = parse_call(call, "f")[0]
        assert (type(a), type(b), type(c), type(d), type(e)) == (str, dict, int, int, bytes)


def test_the_model_sees_the_doctest_calls_as_shapes_and_a_copy_of_one_is_the_doctests():
    inputs = stage(inputs_per_function=8, calls_asked=5)
    inputs.llm = FakeLLM()
    prompt = inputs.prompt({"name": "pad", "source": SOURCE})
    shapes = prompt.split("Example calls:")[-1]
    assert "pad('ab', 4)\npad('abc', width=5, fill='*')\n\nWrite 5 new calls" in shapes
    assert "'  ab'" not in prompt, "the doctests' outputs are no part of the request"
    chosen = dict(inputs.inputs_for({"function_id": "x", "name": "pad", "source": SOURCE},
                                    'pad("ab", 4)\npad("zz", 1)'))  # fmt: skip
    assert chosen["pad('ab', 4)"] == DOCSTRING and chosen["pad('zz', 1)"] == "fake-model"


def test_hypothesis_draws_do_not_depend_on_the_modules_a_process_has_loaded(tmp_path, monkeypatch):
    """Hypothesis would mix literals of loaded local modules into draws; ours must not see them."""
    before = hypothesis_calls(fn(), Signature.of(fn()), 8, seed=11)
    words = [f"local_constant_{i}" for i in range(300)]
    (tmp_path / "many_words.py").write_text(f"WORDS = {words!r}\nNUMBERS = {list(range(5000, 5300))!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import many_words  # noqa: F401 - loaded for its constants

    assert hypothesis_calls(fn(), Signature.of(fn()), 8, seed=11) == before
    assert not any("local_constant" in call for call in before)


class OneCallLLM(FakeLLM):
    """Records each `generate_seeded` call; answers with the request's function name and its seed."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def generate_seeded(self, requests, sampling, seeds):
        self.calls.append(([r[-2]["content"].count("def pad") for r in requests], list(seeds)))
        return [Completion(f"'{seed}', 1)\n", 10, 10) for seed in seeds]


def test_a_functions_answers_are_asked_side_by_side_in_one_call_each_under_its_seed():
    """So that the local engine feeds each function's prompt once for all its answers."""
    inputs = stage(inputs_per_function=6, answers_per_function=3)
    inputs.llm = OneCallLLM()
    out = inputs.process(pa.table({"function_id": ["a", "b"], "name": ["pad", "pad"], "source": [SOURCE, SOURCE]}))
    seeds = [inputs.answer_seed(i) for i in range(3)]
    assert inputs.llm.calls == [([1] * 6, seeds * 2)]
    models = [[c for c, o in zip(calls, origins) if o == "fake-model"]
              for calls, origins in zip(out.column("inputs").to_pylist(), out.column("input_origins").to_pylist())]
    assert models == [[f"pad('{s}', 1)" for s in seeds]] * 2
