"""The grammar code_inputs sends to llama.cpp: every canonical call is in it, nothing that is not a literal
call of the function is (checked with a small GBNF matcher, tests/gbnf_matcher.py), and llama.cpp (its
server, and the `local` backend's llama.cpp engine) keeps the embedded model to it."""

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
    with pytest.raises(SpecError, match="`grammar: true` needs llama.cpp"):
        CodeInputs(CodeInputsConfig(grammar=True), ctx).setup()


def test_the_grammar_of_one_function_admits_calls_of_it_alone():
    pad = Grammar(calls_grammar("pad"))
    assert pad.matches("pad('a', 3)\npad(text='b')\n")
    assert not pad.matches("clamp(5, 0, 10)") and not pad.matches("padding('a')")
    with pytest.raises(ValueError, match="function name"):
        calls_grammar('x") | [a-z]* #')


def test_the_grammar_of_one_signature_keeps_to_its_arity_and_keywords():
    """The embedded model copies the few-shot example's three arguments and invents keywords."""
    fn = function_node(SOURCES, "pad")
    pad = Grammar(calls_grammar("pad", Signature.of(fn)))
    for call in hypothesis_calls(fn, Signature.of(fn), 12, seed=1) + ["pad('a', 3, fill='-')", "pad(fill='-')"]:
        assert pad.matches(call, "call"), call
    for call in ["pad(-3, 0, 10)", "pad('a', colour=1)", "pad(1, 2, 3, fill='x')"]:
        assert not pad.matches(call, "call"), call
    mix = Grammar(calls_grammar("mix", Signature.of(function_node(SOURCES, "mix"))))
    assert mix.matches("mix(1, {}, (), {'a'}, b'', 1.5, 7, 8, anything=9)", "call")
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup.sh)")
    assert llama_cpp.LlamaGrammar.from_string(calls_grammar("pad", Signature.of(fn)), verbose=False) is not None


def test_the_llama_cpp_engine_keeps_the_model_to_calls_of_the_function(tmp_path):
    """Today's gap: the embedded model, asked as code_inputs asks it with no grammar, writes no call of
    the function (it rewrites the example or the function). Through the `local` backend's llama.cpp
    engine with the function's grammar every line it writes is a call of the function."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup.sh)")
    spec = LLMSpec(backend="local", engine="llama.cpp", batch_size=2, threads=1, cache=False)
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="code_inputs", stage_index=1,
                       output_dir=tmp_path, llm_specs={"default": spec})  # fmt: skip
    stage = CodeInputs(CodeInputsConfig(grammar=True, sampling={"max_tokens": 32, "temperature": 0.8}), ctx)
    stage.setup()
    rows = [{"name": "pad", "source": SOURCES.split("def mix")[0]}]
    (text,) = stage._ask_llm(rows)
    lines = [line for line in text.splitlines() if line.strip()]
    pad = Grammar(calls_grammar("pad"))
    assert lines and all(pad.matches(line, "call") for line in lines[:-1]), text  # the last may be cut short
    assert lines[0].startswith("pad("), text


def test_llama_cpp_reads_the_grammar():
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup.sh)")
    assert llama_cpp.LlamaGrammar.from_string(calls_grammar(), verbose=False) is not None


def test_a_llama_cpp_server_keeps_the_model_to_literal_calls(llama_server, grammar, tmp_path):
    """The embedded 135M model through llama.cpp's server, constrained: every line it writes is a call."""
    spec = LLMSpec(backend="openai", model=SERVER_MODEL, base_url=llama_server.base_url)
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="code_inputs", stage_index=1,
                       output_dir=tmp_path, llm_specs={"default": spec})  # fmt: skip
    stage = CodeInputs(CodeInputsConfig(grammar=True, sampling={"max_tokens": 48, "temperature": 0.8}), ctx)
    stage.setup()
    (text,) = stage._ask_llm([{"name": "pad", "source": SOURCES.split("def mix")[0]}])
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(grammar.matches(line, "call") for line in lines[:-1]), text  # the last may be cut short
