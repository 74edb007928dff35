"""Inputs: N calls per function, proposed by the LLM as Python literals and topped up by a fallback.

1. The LLM sees the function (few-shot: one example function and its calls) and writes one call
   per line. Each line is parsed with `ast.literal_eval` (`generators.code.calls.parse_call`),
   checked against the function's signature and written back in canonical form; anything else is
   skipped. Nothing the model writes is ever evaluated.
2. The fallback fills what the model left short, so a weak model still yields cases: first the
   calls of the docstring's doctests (`>>> name(...)`), then calls built parameter by parameter
   from the default's type, the type hint, else how the body uses the parameter (`p.lower()` ->
   strings, `range(p)` -> ints...), else its name (`text` -> strings, `n` -> ints...), drawn with
   a seed derived from the stage seed and the function.

Adds `inputs` (list<string>, canonical calls) and `input_origins` (list<string>: the model's id,
`fallback:docstring` or `fallback:signature`). A function with no input at all is dropped with
the reason `no_inputs`.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from generators.code.calls import CallError, Signature, format_call, parse_call
from generators.code.prompts import render
from generators.instruct.prompts import Sampling, user_request
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import MapStage, derive_seed, mark_dropped, set_column

DOCSTRING, SIGNATURE = "fallback:docstring", "fallback:signature"

INTS = (0, 1, 2, 3, 5, 7, 10, 16, 42, 100, 255, 1000, -1, -7)
FLOATS = (0.0, 0.5, 1.0, 2.5, -1.5, 3.14159, 100.0, 0.001)
STRS = ("", "a", "abc", "hello", "Hello, World!", "hello world", "  spaced  ", "snake_case_name", "CamelCase",
        "42", "3.14", "a,b,c", "line1\nline2", "tab\there", "x=1; y=2", "foo.bar", "/usr/lib/python3",
        "ünïcödé", "<b>bold</b>", "The quick brown fox")  # fmt: skip
BYTES = (b"", b"a", b"abc", b"hello world", b"\x00\x01\xff", b"caf\xc3\xa9")
BOOLS = (True, False)
LISTS = ([], [1], [1, 2, 3], [3, 1, 2], [5, -2, 9, 0], ["a", "b", "c"], ["banana", "apple"], [1.5, 2.5],
         [[1, 2], [3, 4]])  # fmt: skip
TUPLES = ((), (1,), (1, 2), (1, 2, 3), ("a", 1), (0, 0, 0))
DICTS = ({}, {"a": 1}, {"a": 1, "b": 2}, {"x": "y", "k": "v"}, {1: "one", 2: "two"})
SETS = ({1, 2, 3}, {"a", "b"}, {0})
CHARS = ("a", "Z", "0", " ", "\n", "é", "~", "\x00", "\u3042")
LISTS_OF_STR = ([], ["a"], ["hello", "world"], ["a", "b", "c"], ["x", "", "y"])
MIXED = (0, 1, 3, -1, 1.5, "", "abc", "hello world", [], [1, 2, 3], ("a", 1), {"a": 1}, None, True)

POOLS_BY_TYPE = {
    "int": INTS, "float": FLOATS + INTS[:4], "complex": (1j, 2 + 3j, 0j), "str": STRS, "bytes": BYTES,
    "bytearray": BYTES, "bool": BOOLS, "list": LISTS, "List": LISTS, "Sequence": LISTS + TUPLES,
    "Iterable": LISTS + TUPLES, "Collection": LISTS, "MutableSequence": LISTS, "tuple": TUPLES, "Tuple": TUPLES,
    "dict": DICTS, "Dict": DICTS, "Mapping": DICTS, "MutableMapping": DICTS, "set": SETS, "Set": SETS,
    "frozenset": SETS, "None": (None,), "NoneType": (None,), "char": CHARS, "list_str": LISTS_OF_STR,
}  # fmt: skip
"""Candidate values by the name of a type in an annotation (or of a default's type)."""

POOLS_BY_NAME = (
    (r"^(s|st|str|string|text|txt|name|word|line|prefix|suffix|sep|char|c|ch|pattern|pat|fmt|format|key|"
     r"url|host|mode|encoding|chars|label|title|msg|message|value_str|template|source|src|ident|tag)$", STRS),
    (r"^(n|i|j|k|m|count|num|size|width|length|len|index|idx|pos|start|end|stop|step|level|depth|base|bits|"
     r"digits|ndigits|precision|offset|limit|year|month|day|hour|minute|second|port|code|indent|tabsize)$"
     r"|_(count|size|len|index|num|width)$|^(num|max|min)_", INTS),
    (r"^(x|y|z|a|b|value|val|number|factor|ratio|rate|f|q|p|t|weight|scale|amount)$", INTS[:8] + FLOATS[:5]),
    (r"^(items|seq|sequence|lst|list|values|iterable|elements|array|nums|numbers|args|data|parts|words|lines|"
     r"pairs|keys|names|vector|v|xs|it|l|tup|tuple)$|s$", LISTS + TUPLES[:3]),
    (r"^(d|dct|dict|mapping|kw|kwargs|table|attrs|params|options|headers|env)$", DICTS),
    (r"^(flag|strict|reverse|verbose|quiet|recursive|force|enabled|ignore_case|is_\w+|use_\w+|keep\w*)$", BOOLS),
    (r"^(buf|buffer|raw|blob|byts|bytes|bs|payload|octets)$", BYTES),
)  # fmt: skip
"""Candidate values by the parameter's name, first match wins."""

METHOD_TYPES = {
    **dict.fromkeys(("lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith",
                     "endswith", "replace", "find", "rfind", "isdigit", "isalpha", "isspace", "isalnum", "isupper",
                     "islower", "title", "capitalize", "casefold", "encode", "format", "partition", "rpartition",
                     "expandtabs", "zfill", "center", "ljust", "rjust", "translate", "isidentifier"), "str"),
    **dict.fromkeys(("decode", "hex"), "bytes"),
    **dict.fromkeys(("append", "extend", "insert", "sort", "reverse", "remove"), "list"),
    **dict.fromkeys(("items", "keys", "values", "get", "setdefault", "update"), "dict"),
    **dict.fromkeys(("real", "imag", "bit_length", "is_integer", "conjugate"), "int"),
}  # fmt: skip
"""What calling a method on a parameter says about its type."""

CALL_TYPES = {"range": "int", "ord": "char", "chr": "int", "hex": "int", "oct": "int", "bin": "int", "abs": "int",
              "round": "float", "sum": "list", "sorted": "list", "reversed": "list", "enumerate": "list",
              "bytes": "list", "bytearray": "bytes"}  # fmt: skip
"""What passing a parameter to a builtin says about its type."""

STOP = ("Function:",)
"""Where the model starts a new example, the list of calls is over."""

_DOCTEST = re.compile(r"^\s*>>>\s*(.+)$", re.MULTILINE)


class CodeInputsConfig(StageConfig):
    kind: Literal["code_inputs"] = "code_inputs"
    llm: str | None = Field("default", description="Backend in the spec's `llm:` section; null: fallback only")
    inputs_per_function: int = Field(8, ge=1, le=100, description="Calls per function, at most")
    max_input_chars: int = Field(200, ge=10, description="Longest call text kept")
    fallback: bool = Field(True, description="Top up with doctest and signature-based calls")
    sampling: Sampling = Sampling(max_tokens=256, temperature=0.8)


# ---------------------------------------------------------------- from the LLM


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
    """Up to `count` distinct calls built from each parameter's hint, default and name."""
    params = _parameters(fn)
    calls: list[str] = []
    for _ in range(count * 5):
        args, kwargs = _draw(params, rng)
        call = format_call(fn.name, args, kwargs)
        try:
            signature.check(args, kwargs)
        except CallError:
            continue
        if call not in calls and len(call) <= max_chars:
            calls.append(call)
            if len(calls) == count:
                break
    return calls


def _parameters(fn: ast.FunctionDef) -> list[tuple[str, str, tuple, bool]]:
    """(name, kind, candidate values, required) per parameter; kind: positional, keyword or varargs."""
    a = fn.args
    usage = usage_types(fn)
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params = [(p.arg, "positional", _pool(p, d, usage), d is None) for p, d in zip(positional, defaults)]
    if a.vararg is not None:
        params.append((a.vararg.arg, "varargs", _pool(a.vararg, None, usage), False))
    params += [(p.arg, "keyword", _pool(p, d, usage), d is None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return params


def usage_types(fn: ast.FunctionDef) -> dict[str, list[str]]:
    """Type names a parameter's use in the body implies: `p.lower()` -> str, `p.items()` -> dict,
    `range(p)` or `p + 1` -> int, `ord(p)` -> a character, `sep.join(p)` -> a list of strings,
    `isinstance(p, bytes)` -> bytes. First seen first."""
    found: dict[str, list[str]] = {}

    def note(node: ast.AST, type_name: str | None) -> None:
        if isinstance(node, ast.Name) and type_name and type_name not in found.setdefault(node.id, []):
            found[node.id].append(type_name)

    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute):
            note(node.value, METHOD_TYPES.get(node.attr))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Mod, ast.FloorDiv)):
            for side, other in ((node.left, node.right), (node.right, node.left)):
                if isinstance(other, ast.Constant) and type(other.value) in (int, float, str):
                    note(side, type(other.value).__name__)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
            note(node.args[0] if node.args else node.func, "list_str")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            if node.func.id in CALL_TYPES:
                for arg in node.args[:1] if node.func.id != "range" else node.args:
                    note(arg, CALL_TYPES[node.func.id])
            elif node.func.id == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                for kind in kinds:
                    note(node.args[0], kind.id if isinstance(kind, ast.Name) else None)
    return found


def _draw(params: list[tuple[str, str, tuple, bool]], rng: random.Random) -> tuple[tuple, dict[str, Any]]:
    """One call: every required parameter, each optional one with probability 1/3."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    skipped = False  # once an optional positional is left out, later ones go by keyword
    for name, kind, pool, required in params:
        if kind == "varargs":
            if not skipped:
                args += [rng.choice(pool) for _ in range(rng.randint(0 if args else 1, 2))]
        elif required or rng.random() < 1 / 3:
            if kind == "positional" and not skipped:
                args.append(rng.choice(pool))
            else:
                kwargs[name] = rng.choice(pool)
        else:
            skipped = True
    return tuple(args), kwargs


def _pool(param: ast.arg, default: ast.expr | None, usage: dict[str, list[str]]) -> tuple:
    """Candidate values: the default and its type's pool, the hint's, else the use's, else the name's."""
    pool: tuple = ()
    if default is not None:
        try:
            value = ast.literal_eval(default)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = ...
        if value is not ...:
            pool = (value,) + POOLS_BY_TYPE.get(type(value).__name__, ())
    for type_name in _annotation_names(param.annotation) or usage.get(param.arg, [])[:1]:
        pool += POOLS_BY_TYPE.get(type_name, ())
    if len(pool) <= 1:
        pool += next((p for pattern, p in POOLS_BY_NAME if re.search(pattern, param.arg)), MIXED)
    return pool


def _annotation_names(node: ast.expr | None) -> list[str]:
    """Type names in a hint: `list[int]` -> [list], `int | None` -> [int, None], "str" -> [str]."""
    if node is None:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _annotation_names(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return []
    if isinstance(node, ast.Constant) and node.value is None:
        return ["None"]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation_names(node.left) + _annotation_names(node.right)
    if isinstance(node, ast.Subscript):
        outer = _annotation_names(node.value)
        if outer and outer[0] in ("Optional", "Union"):
            inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return [n for e in inner for n in _annotation_names(e)] + (["None"] if outer[0] == "Optional" else [])
        return outer
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


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
        self.llm = self.ctx.llm(self.config.llm) if self.config.llm else None

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
        if self.llm is None or not rows:
            return [""] * len(rows)
        count = str(self.config.inputs_per_function)
        requests = [user_request(render("propose_inputs", source=r["source"].strip(), count=count)) for r in rows]
        # one seed for the stage: the backends make each request's text depend on it and on the
        # request alone, so a function's proposals do not depend on the batch it landed in
        sampling = self.config.sampling.params(self.ctx.stage_seed).model_copy(update={"stop": STOP})
        return [c.text for c in self.llm.generate(requests, sampling)]

    def inputs_for(self, row: dict, completion: str) -> list[tuple[str, str]]:
        """(call, origin) pairs: the model's calls first, then the fallback's, up to N distinct calls."""
        cfg = self.config
        fn = function_node(row["source"], row["name"])
        signature = Signature.of(fn)
        limit, found = cfg.max_input_chars, []
        if self.llm is not None:
            found += [(c, self.llm.model_id) for c in proposed_calls(completion, fn.name, signature, limit)]
        if cfg.fallback:
            rng = random.Random(derive_seed(self.ctx.stage_seed, row["function_id"]))
            found += [(c, DOCSTRING) for c in doctest_calls(fn, signature, limit)]
            found += [(c, SIGNATURE) for c in signature_calls(fn, signature, cfg.inputs_per_function, rng, limit)]
        unique: dict[str, str] = {}
        for call, origin in found:
            unique.setdefault(call, origin)
        return list(unique.items())[: cfg.inputs_per_function]
