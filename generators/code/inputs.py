"""Inputs: N calls per function, proposed by the LLM as Python literals and topped up by a fallback.

1. The LLM sees the function and its doctest calls as examples of the arguments' shapes, after two
   worked examples as earlier chat turns (`SHOTS`: a function, then a numbered list of calls of it
   as the assistant's answer), and its answer begins `1. name(`: it writes the arguments of a
   first call and goes on down the list (left free, the embedded model mostly rewrote the function
   or the example; asked in one message for one call per line, it wrote one call at most). Each
   line is parsed with `ast.literal_eval` (`generators.code.calls.parse_call`), checked against
   the function's signature and written back in canonical form; anything else is skipped. Nothing
   the model writes is ever evaluated. A call the model copied from the doctests counts as a
   doctest's; the worked examples call other functions, so no call of this one is ours. With
   `answers_per_function` above 1 the same request is answered again under other seeds, in the same
   `generate` call (`generate_seeded`: the local engine feeds the prompt once for all of them), and
   the answers' calls are pooled.
2. The fallback fills what the model left short, so a weak model still yields cases: first the
   calls of the docstring's doctests (`>>> name(...)`), then calls drawn from `hypothesis`
   strategies for each parameter's type hint, the doctest values' types, its default, its use in
   the body or its name (`generators.code.strategies`), seeded from the stage seed and the function.

Adds `inputs` (list<string>, canonical calls) and `input_origins` (list<string>: the model's id,
`fallback:docstring` or `fallback:hypothesis`), and counts `inputs_<origin>`. A function with no
input at all is dropped with the reason `no_inputs`.
"""

from __future__ import annotations

import ast
import functools
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from generators.code.calls import CallError, Signature, format_call, parse_call
from generators.code.leaks import shown_source
from generators.code.prompts import render
from generators.code.strategies import hypothesis_calls
from generators.instruct.prompts import Sampling, user_request
from synth.errors import SpecError
from synth.llm.base import ChatRequest, split_prefill
from synth.registry import register
from synth.spec import LLMSpec, StageConfig
from synth.stage import MapStage, derive_seed, mark_dropped, set_column

DOCSTRING, HYPOTHESIS = "fallback:docstring", "fallback:hypothesis"

STOP = ("Function:", "\n\n")
"""Where the model starts a new example or leaves a blank line, the list of calls is over."""

SHOTS = (
    ("def clamp(value, low, high):\n    return max(low, min(value, high))", ("clamp(5, 0, 10)",),
     ("clamp(-3, 0, 10)", "clamp(42, 0, 10)", "clamp(2.5, 1.0, 2.0)", "clamp(7, 7, 7)")),
    ("def initials(name, sep='.'):\n    parts = name.split()\n    if not parts:\n        return ''\n"
     "    return sep.join(p[0].upper() for p in parts) + sep", (),
     ("initials('ada lovelace')", "initials('')", "initials('grace brewster murray hopper', sep='')",
      "initials('x', '-')")),
)  # fmt: skip
"""Worked examples, (function, its example calls, the answer's calls): ordinary inputs, edge cases,
keywords, each branch."""

_DOCTEST = re.compile(r"^\s*>>>\s*(.+)$", re.MULTILINE)


class CodeInputsConfig(StageConfig):
    kind: Literal["code_inputs"] = "code_inputs"
    llm: str | None = Field("default", description="Backend in the spec's `llm:` section; null: fallback only")
    inputs_per_function: int = Field(8, ge=1, le=100, description="Calls kept, at most")
    calls_asked: int = Field(4, ge=1, le=100, description="Calls the model is asked to write (the worked examples "
                             "show 4; asked for 8, the embedded model wrote no more)")
    answers_per_function: int = Field(
        1, ge=1, le=16, description="Answers the model writes per function, each sampled with its own seed; "
        "their calls are pooled (a weak model writes about one usable call per answer)"
    )  # fmt: skip
    candidates_per_function: int | None = Field(
        None, ge=1, le=200, description="Calls kept, at most, when `code_coverage` chooses among them afterwards "
        "(default: inputs_per_function); hypothesis draws fill up to it"
    )  # fmt: skip
    worked_examples: bool = Field(True, description="Show the worked examples (`SHOTS`) as earlier turns; a model "
                                  "that writes the list without them saves their prompt tokens")
    max_input_chars: int = Field(200, ge=10, description="Longest call text kept")
    fallback: bool = Field(True, description="Top up with doctest calls and calls drawn from hypothesis strategies")
    sampling: Sampling = Sampling(max_tokens=256, temperature=0.8)
    grammar: bool = Field(
        False, description="Constrain the model to lines of literal calls of the function (templates/calls.gbnf); "
        "needs llama.cpp: the `openai` backend pointed at llama-server or the `local` backend's llama.cpp engine"
    )  # fmt: skip


# ---------------------------------------------------------------- from the LLM


def takes_grammar(spec: LLMSpec) -> bool:
    """Whether a backend honours `SamplingParams.grammar` (GBNF): llama.cpp's server or engine."""
    from synth.llm.engines import engine_for  # imports torch: only where a grammar is asked for

    return spec.backend == "openai" or (spec.backend == "local" and engine_for(spec) == "llama.cpp")


@functools.cache
def calls_grammar(name: str | None = None, signature: Signature | None = None) -> str:
    """GBNF of lines that are each one call with literal arguments (llama.cpp's grammar format), of
    `name` only when it is given (a weak model left free to pick the callee writes anything there),
    and with a `signature` no more positional arguments than it takes and only its keywords (the
    embedded model otherwise invents keywords and copies the few-shot example's arity)."""
    text = (Path(__file__).parent / "templates" / "calls.gbnf").read_text()
    if name is None:
        return text
    if not name.isidentifier():
        raise ValueError(f"expected a function name, got {name!r}")
    text = text.replace("callee   ::= name", f'callee   ::= "{name}"')
    return text if signature is None else text + _arguments_rules(signature)


def _arguments_rules(signature: Signature) -> str:
    """`args` of one signature (llama.cpp takes a rule's last definition)."""
    names = [*signature.positional, *signature.keyword_only]
    keyword = "name" if signature.var_keyword else " | ".join(f'"{k}"' for k in names)
    rules, choices = [], []
    if signature.var_positional:
        rules.append('positional ::= value ("," ws value)*')
    elif signature.positional:
        nested = "value"
        for _ in signature.positional[1:]:
            nested = f'value ("," ws {nested})?'
        rules.append(f"positional ::= {nested}")
    if rules:
        choices.append("positional")
    if keyword:
        rules += ['keywords ::= keyword ("," ws keyword)*', f'keyword  ::= ({keyword}) ws "=" ws value']
        choices += ['positional "," ws keywords'] if choices else []
        choices.append("keywords")
    if not choices:
        return '\nargs     ::= ""\n'
    return "\n" + "\n".join([f'args     ::= ({" | ".join(choices)}) ","?', *rules]) + "\n"


def proposed_calls(text: str, name: str, signature: Signature, max_chars: int = 200) -> Iterator[str]:
    """Canonical calls of `name` found in an LLM completion, one per line, in order."""
    pattern = re.compile(r"(?<![\w.])" + re.escape(name) + r"\s*\(")
    for line in text.splitlines():
        match = pattern.search(line)
        if match:
            call = _first_call(line[match.start() :], name, signature)
            if call is not None and len(call) <= max_chars:
                yield call


def _first_call(text: str, name: str, signature: Signature) -> str | None:
    """The longest prefix of `text`, ending at a ')', that is a valid literal call."""
    for end in [i for i, ch in enumerate(text) if ch == ")"][::-1]:
        try:
            args, kwargs = parse_call(text[: end + 1], name)
            signature.check(args, kwargs)
        except CallError:
            continue
        return format_call(name, args, kwargs)
    return None


# ---------------------------------------------------------------- the fallback


def doctest_calls(fn: ast.FunctionDef, signature: Signature, max_chars: int = 200) -> list[str]:
    docstring = ast.get_docstring(fn) or ""
    return [c for m in _DOCTEST.finditer(docstring) for c in proposed_calls(m.group(1), fn.name, signature, max_chars)]


def signature_calls(fn: ast.FunctionDef, signature: Signature, count: int, rng: random.Random,
                    max_chars: int = 200) -> list[str]:  # fmt: skip
    """Up to `count` calls drawn from the parameters' strategies (no doctests), seeded by `rng`:
    inputs for benchmarks and tests that need calls of any function."""
    return hypothesis_calls(fn, signature, count, rng.getrandbits(32), (), max_chars)


# ---------------------------------------------------------------- the stage


def function_node(source: str, name: str) -> ast.FunctionDef:
    """The `def name` at the top level of `source`."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise ValueError(f"no top-level function {name!r} in the source")


@register
class CodeInputs(MapStage):
    kind = "code_inputs"
    Config = CodeInputsConfig
    description = "Propose inputs per function with the LLM (literal calls), topped up by a fallback"
    stateful = True

    def setup(self) -> None:
        name = self.config.llm
        if self.config.grammar and name and name in self.ctx.llm_specs and not takes_grammar(self.ctx.llm_specs[name]):
            raise SpecError(f"code_inputs: `grammar: true` needs llama.cpp: the `openai` backend pointed at "
                            f"llama-server, or the `local` backend with `engine: llama.cpp`; llm {name!r} is neither")
        self.llm = self.ctx.llm(name) if name else None

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["function_id", "name", "source"]).to_pylist()
        completions = self._ask_llm(rows)
        chosen = [self.inputs_for(row, text) for row, text in zip(rows, completions)]
        strings = pa.list_(pa.string())
        batch = set_column(batch, "inputs", pa.array([[c for c, _ in calls] for calls in chosen], strings))
        batch = set_column(batch, "input_origins", pa.array([[o for _, o in calls] for calls in chosen], strings))
        self.ctx.count(**{f"inputs_{origin}": sum(o == origin for calls in chosen for _, o in calls)
                          for origin in {o for calls in chosen for _, o in calls}})  # fmt: skip
        return mark_dropped(batch, [None if calls else "no_inputs" for calls in chosen])

    def _ask_llm(self, rows: list[dict]) -> list[str]:
        """Each function's answers, one after another (the calls are read line by line)."""
        if self.llm is None or not rows:
            return [""] * len(rows)
        n = self.config.answers_per_function
        requests = [self.request(row) for row in rows]
        seeds = [self.answer_seed(i) for i in range(n)]
        sampling = self.config.sampling.params(seeds[0]).model_copy(update={"stop": STOP})
        if not self.config.grammar:
            # One call, a function's answers side by side: the engine feeds its prompt once.
            asked = [request for request in requests for _ in seeds]
            completions = self.llm.generate_seeded(asked, sampling, seeds * len(requests))
        else:  # a grammar per function (its own name as the callee), so one function per generate call
            completions = [c for row, request in zip(rows, requests)
                           for c in self.llm.generate_seeded([request] * n, sampling.model_copy(
                               update={"grammar": self.grammar(row)}), seeds)]  # fmt: skip
        begun = [split_prefill(request)[1] for request in requests]
        return ["\n".join(start + c.text for c in completions[i * n : (i + 1) * n]) for i, start in enumerate(begun)]

    def answer_seed(self, index: int) -> int:
        """One seed per answer for the whole stage: the backends make each request's text depend on
        it and on the request alone, so a function's proposals do not depend on the batch it landed
        in. The first answer keeps the stage's seed (and so its cached texts)."""
        return self.ctx.stage_seed if index == 0 else derive_seed(self.ctx.stage_seed, "answer", index)

    def request(self, row: dict) -> ChatRequest:
        """The worked examples as earlier turns (unless `worked_examples: false`), the prompt, and
        the answer begun `1. name(`. Under a grammar, which fixes the callee itself and holds the
        answer to lines of calls, the answers are plain lines and the model's answer is its own from
        the first character."""
        numbered = not self.config.grammar
        messages: ChatRequest = []
        for source, examples, calls in SHOTS if self.config.worked_examples else ():
            answer = [f"{i}. {call}" if numbered else call for i, call in enumerate(calls, 1)]
            messages += user_request(self._prompt(source, list(examples), len(calls), numbered))
            messages.append({"role": "assistant", "content": "\n".join(answer)})
        messages += user_request(self.prompt(row))
        return [*messages, {"role": "assistant", "content": f"1. {row['name']}("}] if numbered else messages

    @staticmethod
    def grammar(row: dict) -> str:
        """The calls the model may write for one function: of its name, fitting its parameters."""
        return calls_grammar(row["name"], Signature.of(function_node(row["source"], row["name"])))

    def prompt(self, row: dict) -> str:
        """The request for one function: its source, and its doctest calls as examples of shapes."""
        fn = function_node(row["source"], row["name"])
        examples = doctest_calls(fn, Signature.of(fn), self.config.max_input_chars)
        source = shown_source(row["source"], row["name"]).strip()
        return self._prompt(source, examples, self.config.calls_asked, not self.config.grammar)

    @staticmethod
    def _prompt(source: str, examples: list[str], count: int, numbered: bool) -> str:
        shown = "\n".join(["", "Example calls:", *examples, ""]) if examples else ""
        layout = "as a numbered list" if numbered else "one per line"
        return render("propose_inputs", source=source, examples=shown, count=str(count), layout=layout)

    def inputs_for(self, row: dict, completion: str) -> list[tuple[str, str]]:
        """(call, origin) pairs: the model's calls first, then the fallback's, up to N (or the
        candidates wanted) distinct calls."""
        cfg = self.config
        fn = function_node(row["source"], row["name"])
        signature = Signature.of(fn)
        limit = cfg.max_input_chars
        doctests = doctest_calls(fn, signature, limit)
        wanted = cfg.candidates_per_function or cfg.inputs_per_function
        found = []
        if self.llm is not None:  # what the model copied from the doctests it was shown is the doctests'
            found += [(c, self.llm.model_id) for c in proposed_calls(completion, fn.name, signature, limit)
                      if c not in doctests]  # fmt: skip
        if cfg.fallback:
            seed = derive_seed(self.ctx.stage_seed, row["function_id"]) % 2**32
            examples = [parse_call(c, fn.name) for c in doctests]
            found += [(c, DOCSTRING) for c in doctests]
            found += [(c, HYPOTHESIS) for c in hypothesis_calls(fn, signature, wanted, seed, examples, limit)]
        unique: dict[str, str] = {}
        for call, origin in found:
            unique.setdefault(call, origin)
        return list(unique.items())[:wanted]
