"""Function calls as text: `name(1, 'a', key=[2])`, parsed with `ast.literal_eval`, never `eval`.

A case's input is stored as one canonical call expression: every argument is a Python literal,
written back with `repr`, so the same input always reads the same. `parse_call` turns model text
into (args, kwargs) or says why it cannot; `format_call` writes the canonical form.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any


class CallError(ValueError):
    """Text that is not a call of the expected function with literal arguments."""


@dataclass(frozen=True)
class Signature:
    """What a call must fit: the function's parameters, read from its `ast` definition."""

    positional: tuple[str, ...]  # positional-only and positional-or-keyword, in order
    keyword_only: tuple[str, ...]
    required: frozenset[str]
    var_positional: bool
    var_keyword: bool

    @classmethod
    def of(cls, fn: ast.FunctionDef) -> Signature:
        a = fn.args
        positional = [p.arg for p in a.posonlyargs + a.args]
        with_default = positional[len(positional) - len(a.defaults) :]
        kw_required = [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
        required = {p for p in positional if p not in with_default} | set(kw_required)
        return cls(tuple(positional), tuple(p.arg for p in a.kwonlyargs), frozenset(required),
                   a.vararg is not None, a.kwarg is not None)  # fmt: skip

    def check(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Raise CallError unless the arguments bind to these parameters."""
        if len(args) > len(self.positional) and not self.var_positional:
            raise CallError(f"{len(args)} positional arguments, the function takes at most {len(self.positional)}")
        bound = set(self.positional[: len(args)])
        for name in kwargs:
            if name in bound:
                raise CallError(f"argument {name!r} given twice")
            if name not in self.positional and name not in self.keyword_only and not self.var_keyword:
                raise CallError(f"unknown keyword argument {name!r}")
        missing = self.required - bound - set(kwargs)
        if missing:
            raise CallError(f"missing required argument(s): {', '.join(sorted(missing))}")


def parse_call(text: str, name: str) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) of `text`, a call of `name` whose arguments are all literals."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise CallError(f"not a Python expression: {exc.msg}") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name):
        raise CallError(f"expected a call of {name}(...)")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise CallError("expected plain arguments, got *args or **kwargs")
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise CallError("expected literal arguments (numbers, strings, bytes, lists, tuples, dicts, sets...)") from None
    for value in (*args, *kwargs.values()):
        if not is_literal(value):
            raise CallError(f"argument {value!r:.40} does not survive repr and literal_eval")
    return args, kwargs


def format_call(name: str, args: tuple, kwargs: dict[str, Any]) -> str:
    """The canonical text of a call: `repr` of every argument."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def is_literal(value: Any, depth: int = 0) -> bool:
    """True when `ast.literal_eval(repr(value)) == value`: exact builtin types, finite floats."""
    kind = type(value)
    if depth > 20:
        return False
    if kind in (int, str, bytes, bool, type(None)):
        return kind is not int or value.bit_length() < 4000  # longer ints have no repr in 3.11
    if kind is float:
        return math.isfinite(value)
    if kind is complex:
        return math.isfinite(value.real) and math.isfinite(value.imag)
    if kind in (tuple, list) or (kind is set and value):  # repr(set()) is "set()": not a literal
        return all(is_literal(v, depth + 1) for v in value)
    if kind is dict:
        return all(is_literal(k, depth + 1) and is_literal(v, depth + 1) for k, v in value.items())
    return False
