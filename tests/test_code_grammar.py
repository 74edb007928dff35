"""The grammar code_inputs may send to llama-server: every canonical call is in it, nothing that is not a
literal call is (checked with a small GBNF matcher, tests/gbnf_matcher.py: no llama.cpp runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from generators.code.calls import Signature, format_call
from generators.code.inputs import CodeInputs, CodeInputsConfig, calls_grammar, function_node
from generators.code.strategies import hypothesis_calls
from synth.errors import SpecError
from synth.llm.base import SamplingParams
from synth.llm.openai import OpenAIClient
from synth.spec import LLMSpec
from synth.stage import StageContext
from gbnf_matcher import Grammar
from llm_fixtures import SERVER_MODEL, llama_server  # noqa: F401

SOURCES = '''
def pad(text: str, width: int = 8, *, fill: str = " ") -> str:
    return text
def mix(a, b: dict[str, list[int]], c: tuple[int, ...], d: set[str], e: bytes, f: float, *rest, **kw):
    return a
'''


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar(calls_grammar())


def test_canonical_calls_are_in_the_grammar(grammar):
    values = [1, -7, 2.5, -1e-05, 1e+16, "it's", 'say "hi"', "tab\there\n", b"\x00\xff'", True, None, [], [1, [2, 3]],
              (), (1,), (1, "a"), {}, {"k": {1, 2}}, {3}, 1j]  # fmt: skip
    for value in values:
        assert grammar.matches(format_call("f", (value,), {"key": value}), "call"), value
    for name in ("pad", "mix"):
        fn = function_node(SOURCES, name)
        calls = hypothesis_calls(fn, Signature.of(fn), 12, seed=1)
        assert calls and all(grammar.matches(call, "call") for call in calls), calls
        assert grammar.matches("\n".join(calls) + "\n")


@pytest.mark.parametrize("text", ["pad(os.getcwd())", "pad(1 + 2)", "pad(x)", "Sure! pad(1)", "pad('a'",
                                  "pad(1)\nFunction:", "pad(**{'a': 1})"])  # fmt: skip
def test_what_is_no_literal_call_is_not(grammar, text):
    assert not grammar.matches(text)


def test_the_openai_backend_sends_the_grammar_and_the_stage_asks_only_it():
    client = OpenAIClient(LLMSpec(backend="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    body = client._body([{"role": "user", "content": "x"}], SamplingParams(grammar=calls_grammar()))
    assert body["grammar"] == calls_grammar()
    assert "grammar" not in client._body([{"role": "user", "content": "x"}], SamplingParams())
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="code_inputs", stage_index=1,
                       output_dir=Path("."), llm_specs={"default": LLMSpec(backend="local")})  # fmt: skip
    with pytest.raises(SpecError, match="`grammar: true` needs the `openai` backend"):
        CodeInputs(CodeInputsConfig(grammar=True), ctx).setup()


def test_llama_cpp_reads_the_grammar():
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup.sh)")
    assert llama_cpp.LlamaGrammar.from_string(calls_grammar(), verbose=False) is not None


def test_a_llama_cpp_server_keeps_the_model_to_literal_calls(llama_server, grammar):
    """The embedded 135M model through llama.cpp's server, constrained: every line it writes is a call."""
    spec = LLMSpec(backend="openai", model=SERVER_MODEL, base_url=llama_server.base_url)
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="code_inputs", stage_index=1,
                       output_dir=Path("."), llm_specs={"default": spec})  # fmt: skip
    stage = CodeInputs(CodeInputsConfig(grammar=True, sampling={"max_tokens": 48, "temperature": 0.8}), ctx)
    stage.setup()
    (text,) = stage._ask_llm([{"name": "pad", "source": SOURCES.split("def mix")[0]}])
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(grammar.matches(line, "call") for line in lines[:-1]), text  # the last may be cut short
