"""What a function can reach besides its own names: module aliases, introspection, names by string.

`corpus.io_reason` rejects a function that names an I/O module or attribute. These rules close
the ways around naming one:
- an alias through another module: `posixpath.os`, `shutil.os.system`, `os.path.os`,
  `posixpath.genericpath.os` (each step resolved through the imports in that module's source,
  found without importing it) is judged as the module it resolves to;
- a module used as a value rather than for one of its attributes: `o = os`, `f(posixpath.os)`,
  `attrgetter("os.write")(posixpath)`: what is done with it later is out of sight;
- introspection that leads to any module's globals or builtins: dunder attributes such as
  `__globals__`, `__builtins__`, `__subclasses__`, `__dict__`, frame and traceback attributes,
  the same names in strings (`getattr(f, "__globals__")`, `attrgetter("__init__.__globals__")`),
  and `globals()` / `vars()`;
- attributes by string: `getattr`/`setattr`/`delattr` with a name that is not a literal; a
  literal one is judged as the attribute it names (`getattr(os, "system")` is `os.system`).
The sandbox still contains whatever a static check misses; these rules keep the corpus about
computation, and keep functions that would tamper with the harness out of it.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path

REACHING_ATTRIBUTES = frozenset({
    "__globals__", "__builtins__", "__subclasses__", "__bases__", "__base__", "__mro__", "__dict__", "__code__",
    "__closure__", "__func__", "__self__", "__loader__", "__spec__", "__import__", "__getattribute__", "__reduce__",
    "__reduce_ex__", "__subclasshook__", "__init_subclass__", "__traceback__", "__class_getitem__", "__kwdefaults__",
    "__defaults__", "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "tb_frame", "tb_next", "gi_frame",
    "cr_frame", "ag_frame", "gi_code", "cr_code", "mro",
})  # fmt: skip
"""Attributes (and strings) that lead from any object to globals, builtins, frames or classes."""

REACHING_CALLS = frozenset({"globals", "vars"})
NAME_CALLS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
_MAX_STEPS = 8

Judge = Callable[[str, "str | None"], bool]
"""(module, attribute or None) -> whether that is I/O: `corpus._is_io_module`."""


def reach_reason(fn: ast.AST, names: dict[str, tuple[str, str | None]], is_io: Judge,
                 mixed: frozenset[str]) -> str | None:  # fmt: skip
    """'io' where `fn` reaches I/O past the name check, else None. `names`: name -> (module,
    attribute) of the imports in scope; `mixed`: modules with pure and I/O attributes."""
    attribute_values = {id(node.value) for node in ast.walk(fn) if isinstance(node, ast.Attribute)}
    for node in ast.walk(fn):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_reaching(node.value):
            return "io"
        if isinstance(node, ast.Name) and node.id == "__builtins__":
            return "io"
        if isinstance(node, ast.Attribute) and (node.attr in REACHING_ATTRIBUTES or _reaches(node, names, is_io)):
            return "io"
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in attribute_values:
            if _resolved(node, names) is not None:
                return "io"  # a module passed around as a value: `attrgetter("os.write")(posixpath)`
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and _call_reaches(node, names, is_io):
            return "io"
    return None


def _names_reaching(text: str) -> bool:
    """A string that names a reaching attribute, alone or in a path (`"__init__.__globals__"`)."""
    return any(name in text for name in REACHING_ATTRIBUTES if name.startswith("_")) or text in REACHING_ATTRIBUTES


def _reaches(node: ast.Attribute, names: dict[str, tuple[str, str | None]], is_io: Judge) -> bool:
    """`alias.attr` where the alias resolves, through other modules, to I/O."""
    module = _resolved(node.value, names)
    return module is not None and (is_io(module, None) or is_io(module, node.attr))


def _call_reaches(call: ast.Call, names: dict[str, tuple[str, str | None]], is_io: Judge) -> bool:
    if call.func.id in REACHING_CALLS:
        return True
    if call.func.id not in NAME_CALLS or len(call.args) < 2:
        return False
    name = call.args[1]
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
        return True  # an attribute chosen at run time
    as_attribute = ast.Attribute(value=call.args[0], attr=name.value, ctx=ast.Load())
    return name.value in REACHING_ATTRIBUTES or _reaches(as_attribute, names, is_io) or _resolved(
        as_attribute, names) is not None  # fmt: skip


def _resolved(node: ast.expr, names: dict[str, tuple[str, str | None]]) -> str | None:
    """The module an expression evaluates to, following aliases in module sources; None where it
    is not a module (or cannot be told)."""
    if isinstance(node, ast.Name):
        if node.id not in names:
            return None
        module, attribute = names[node.id]
        return module if attribute is None else _step(module, attribute)
    if isinstance(node, ast.Attribute):
        parent = _resolved(node.value, names)
        return _step(parent, node.attr) if parent else None
    return None


def _step(module: str, attribute: str) -> str | None:
    """What `module.attribute` is when it is a module: a submodule, or a module the source imports."""
    for _ in range(_MAX_STEPS):
        bound = _module_bindings(module).get(attribute)
        if bound is None:
            dotted = f"{module}.{attribute}"
            return dotted if _is_submodule(dotted) else None
        target, attr = bound
        if attr is None:
            return target
        module, attribute = target, attr
    return None


@cache
def _module_bindings(module: str) -> dict[str, tuple[str, str | None]]:
    """Names a module binds by import anywhere outside its functions and classes (`import os`
    under an `if` or `try` too), from its source, without importing it."""
    source = _source_of(module)
    if source is None:
        return {}
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    bound: dict[str, tuple[str, str | None]] = {}
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname else
                                                                   alias.name.split(".")[0], None)  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    bound[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            stack.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return bound


@cache
def _source_of(module: str) -> str | None:
    """A module's source, found on this interpreter's path without importing it."""
    path = _module_file(module)
    if path is None or not path.endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError:
        return None


@cache
def _module_file(module: str) -> str | None:
    """The file of a module or package (its `__init__.py`); a submodule's found by walking the
    package folders, since `find_spec` of a dotted name would import its parents."""
    top, *parts = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    path = getattr(spec, "origin", None)
    for part in parts:
        folder = Path(path).parent if path and path.endswith("__init__.py") else None
        if folder is None:
            return None
        candidates = (folder / f"{part}.py", folder / part / "__init__.py")
        path = next((str(c) for c in candidates if c.is_file()), None)
    return path


def _is_submodule(dotted: str) -> bool:
    return _module_file(dotted) is not None
