"""Fallback inputs drawn from `hypothesis` strategies: one strategy per parameter, by what is known of its type.

A parameter's strategy comes from the first of these that says something:
1. its type hint (`int`, `list[str]`, `Optional[bytes]`, `tuple[int, ...]`, `dict[str, int]`...);
2. the values its doctest calls pass (`f([1, 2], 'a')`: lists of ints, strings);
3. its default's value (`sep=','`: strings);
4. how the body uses it (`p.lower()` -> str, `range(p)` -> int, `sep.join(p)` -> a list of strings,
   `isinstance(p, bytes)` -> bytes);
5. its name, read as a type (`text` -> str, `n` -> int, `items` -> list);
and else a mix of small ints, strings and lists. Values stay small (short strings of printable
ASCII characters, ints within a thousand, half-precision floats, lists of up to six items) so
outputs stay readable; hypothesis draws its edge cases first (0, '', [], the bounds). Draws are
seeded: `hypothesis_calls` gives the same calls for the same seed and hypothesis version.
"""

from __future__ import annotations

import ast
import re
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers as _providers

from generators.code.calls import CallError, Signature, format_call, is_literal

MAX_INT = 1000
CHARS = st.sampled_from([chr(c) for c in range(32, 127)] + ["\n", "\t", "é"])  # no unicode tables cached on disk
TEXT = st.text(CHARS, max_size=16)
INTS = st.integers(-MAX_INT, MAX_INT)
FLOATS = st.floats(-MAX_INT, MAX_INT, allow_nan=False, allow_infinity=False, width=16)  # short reprs: 0.5, 12.25
UNKNOWN = st.one_of(INTS, TEXT, st.lists(INTS, max_size=6))

SCALARS = {
    "int": INTS, "float": FLOATS | INTS, "complex": st.complex_numbers(max_magnitude=MAX_INT, allow_nan=False,
    allow_infinity=False), "str": TEXT, "char": CHARS,
    "bytes": st.binary(max_size=16), "bytearray": st.binary(max_size=16), "bool": st.booleans(),
    "None": st.none(), "NoneType": st.none(),
}  # fmt: skip
SEQUENCES = {"list", "List", "Sequence", "Iterable", "Collection", "MutableSequence", "Iterator", "list_str"}
MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping", "OrderedDict", "defaultdict"}
SETS = {"set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet"}
TUPLES = {"tuple", "Tuple"}

NAME_TYPES = (
    (r"^(s|st|str|string|text|txt|name|word|line|prefix|suffix|sep|char|c|ch|pattern|pat|fmt|key|url|host|"
     r"mode|encoding|chars|label|title|msg|message|template|source|src|ident|tag)$", "str"),
    (r"^(n|i|j|k|m|count|num|size|width|length|index|idx|pos|start|end|stop|step|level|depth|base|bits|"
     r"digits|ndigits|precision|offset|limit|year|month|day|hour|minute|second|port|code|indent|tabsize)$"
     r"|_(count|size|len|index|num|width)$|^(num|max|min)_", "int"),
    (r"^(x|y|z|value|val|number|factor|ratio|rate|weight|scale|amount)$", "float"),
    (r"^(items|seq|sequence|lst|list|values|iterable|elements|array|nums|numbers|data|parts|words|lines|"
     r"pairs|keys|names|vector|xs)$", "list"),
    (r"^(d|dct|dict|mapping|kw|table|attrs|params|options|headers|env)$", "dict"),
    (r"^(flag|strict|reverse|verbose|quiet|recursive|force|enabled|ignore_case|is_\w+|use_\w+)$", "bool"),
    (r"^(buf|buffer|raw|blob|byts|bs|payload|octets)$", "bytes"),
)  # fmt: skip
"""A parameter's name, read as its type when nothing else says (first match wins)."""

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


# ---------------------------------------------------------------- strategies by type


def from_hint(node: ast.expr | None) -> st.SearchStrategy | None:
    """A strategy for a type hint's AST, or None when the hint names nothing known."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "int", a string annotation
        try:
            return from_hint(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return None
    if isinstance(node, ast.Constant) and node.value is None:
        return st.none()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _one_of([from_hint(node.left), from_hint(node.right)])
    if isinstance(node, ast.Subscript):
        outer = _type_name(node.value)
        inner = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer in ("Optional", "Union"):
            return _one_of([from_hint(e) for e in inner] + ([st.none()] if outer == "Optional" else []))
        if outer in TUPLES:
            if len(inner) == 2 and isinstance(inner[1], ast.Constant) and inner[1].value is Ellipsis:
                return st.lists(_known(from_hint(inner[0])), max_size=6).map(tuple)
            return st.tuples(*[_known(from_hint(e)) for e in inner])
        return from_type_name(outer, [from_hint(e) for e in inner])
    return from_type_name(_type_name(node))


def from_type_name(name: str | None, args: list[st.SearchStrategy | None] = ()) -> st.SearchStrategy | None:
    """A strategy for a type named `name` (with element strategies `args` for containers)."""
    item, value = (list(args) + [None, None])[:2]
    if name in SCALARS:
        return SCALARS[name]
    if name in SEQUENCES:
        return st.lists(TEXT if name == "list_str" else _known(item, INTS), max_size=6)
    if name in TUPLES:
        return st.lists(_known(item, INTS), max_size=6).map(tuple)
    if name in MAPPINGS:
        return st.dictionaries(_known(_hashable(item), TEXT), _known(value, INTS), max_size=4)
    if name in SETS:
        return st.sets(_known(_hashable(item), INTS), min_size=1, max_size=5)  # set() is no literal
    return None


def like(value: Any) -> st.SearchStrategy:
    """A strategy for values shaped like `value`, a literal from a doctest or a default."""
    kind = type(value)
    if kind in (list, tuple, set) and value:
        elements = _known(_one_of([like(v) for v in _by_type(value)]))
        if kind is tuple:
            fixed = len(value) <= 4  # a pair stays a pair; a long tuple is a sequence
            return st.tuples(*[like(v) for v in value]) if fixed else st.lists(elements, max_size=6).map(tuple)
        if kind is list:
            return st.lists(elements, max_size=6)
        return st.sets(_known(_hashable(elements), INTS), min_size=1, max_size=5)
    if kind is dict and value:
        key, item = next(iter(value.items()))
        return st.dictionaries(_known(_hashable(like(key)), TEXT), like(item), max_size=4)
    return _known(from_type_name(kind.__name__))


def _known(strategy: st.SearchStrategy | None, otherwise: st.SearchStrategy = UNKNOWN) -> st.SearchStrategy:
    return otherwise if strategy is None else strategy


def _one_of(strategies: list[st.SearchStrategy | None]) -> st.SearchStrategy | None:
    known = list(dict.fromkeys(s for s in strategies if s is not None))
    return (known[0] if len(known) == 1 else st.one_of(known)) if known else None


def _hashable(strategy: st.SearchStrategy | None) -> st.SearchStrategy | None:
    """Keys and set items: the strategy when it is one of the hashable scalars, else None."""
    return strategy if strategy is not None and strategy in SCALARS.values() else None


def _by_type(values) -> list:
    """One value of each type in a collection, in order."""
    seen: dict[type, Any] = {}
    for v in values:
        seen.setdefault(type(v), v)
    return list(seen.values())


def _type_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # typing.List, collections.abc.Sequence
        return node.attr
    return None


# ---------------------------------------------------------------- what the function says


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


def parameter_strategy(param: ast.arg, default: ast.expr | None, seen: list[Any],
                       usage: dict[str, list[str]]) -> st.SearchStrategy:  # fmt: skip
    """The strategy for one parameter: hint, doctest values `seen`, default, use, name (see above)."""
    strategy = from_hint(param.annotation)
    if strategy is None and seen:
        strategy = _one_of([like(v) for v in _by_type(seen)])
    if strategy is None and default is not None:
        value = _literal(default)
        strategy = None if value is ... or value is None else like(value)
    if strategy is None and usage.get(param.arg):
        strategy = from_type_name(usage[param.arg][0])
    if strategy is None:
        strategy = from_type_name(next((t for pattern, t in NAME_TYPES if re.search(pattern, param.arg)), None))
    return _known(strategy)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ...


# ---------------------------------------------------------------- calls


def call_strategy(fn: ast.FunctionDef, examples: list[tuple[tuple, dict]]) -> st.SearchStrategy:
    """Calls (args, kwargs) of `fn`: every required parameter, each optional one or not; `examples`
    are the doctests' (args, kwargs), whose values tell parameters' types."""
    a = fn.args
    usage = usage_types(fn)
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)

    def seen(index: int | None, name: str) -> list[Any]:
        values = [kw[name] for _, kw in examples if name in kw]
        return values + ([args[index] for args, _ in examples if index is not None and index < len(args)])

    params = [(p.arg, "positional", parameter_strategy(p, d, seen(i, p.arg), usage), d is None)
              for i, (p, d) in enumerate(zip(positional, defaults))]  # fmt: skip
    if a.vararg is not None:
        extra = [v for args, _ in examples for v in args[len(positional) :]]
        params.append((a.vararg.arg, "varargs", parameter_strategy(a.vararg, None, extra, usage), False))
    params += [(p.arg, "keyword", parameter_strategy(p, d, seen(None, p.arg), usage), d is None)
               for p, d in zip(a.kwonlyargs, a.kw_defaults)]  # fmt: skip

    @st.composite
    def calls(draw) -> tuple[tuple, dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        skipped = False  # once an optional positional is left out, later ones go by keyword
        for name, kind, strategy, required in params:
            if kind == "varargs":
                if not skipped:
                    args += draw(st.lists(strategy, min_size=0 if args else 1, max_size=2))
            elif required or draw(st.booleans()):
                if kind == "positional" and not skipped:
                    args.append(draw(strategy))
                else:
                    kwargs[name] = draw(strategy)
            else:
                skipped = True
        return tuple(args), kwargs

    return calls()


def draw(strategy: st.SearchStrategy, count: int, seed: int) -> list[Any]:
    """`count` values of `strategy`, the same for the same seed (hypothesis' edge cases first)."""
    found: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    with _global_constants_only():
        collect()
    return found


@contextmanager
def _global_constants_only():
    """Hypothesis mixes literals found in the running program's own modules into some draws (and
    caches them under ./.hypothesis): inputs would then depend on which modules a process has
    loaded and on this project's source, and could hold its strings. Draws here use only
    hypothesis' fixed constants (its cache of them is cleared around the draw)."""
    with mock.patch.object(_providers, "_get_local_constants", _providers.Constants):
        _providers.CONSTANTS_CACHE.cache.clear()
        try:
            yield
        finally:
            _providers.CONSTANTS_CACHE.cache.clear()


def hypothesis_calls(fn: ast.FunctionDef, signature: Signature, count: int, seed: int,
                     examples: list[tuple[tuple, dict]] = (), max_chars: int = 200) -> list[str]:  # fmt: skip
    """Up to `count` distinct canonical calls of `fn` drawn from `call_strategy`."""
    calls: list[str] = []
    for args, kwargs in draw(call_strategy(fn, list(examples)), count * 3, seed):
        try:
            signature.check(args, kwargs)
        except CallError:
            continue
        if not all(is_literal(v) for v in (*args, *kwargs.values())):
            continue
        call = format_call(fn.name, args, kwargs)
        if call not in calls and len(call) <= max_chars:
            calls.append(call)
            if len(calls) == count:
                break
    return calls
