"""The function corpus: top-level functions pulled out of Python source with `ast`.

Sources: the standard library of the sandbox's interpreter (the default), a folder of `.py`
files, or a Parquet file with one module's source per row. Each module-level `def` is a
candidate; it is kept when it

- takes arguments and returns a value (`return <expr>`), and is not a generator, async or decorated;
- is at most `max_lines` long;
- does no file, network or process I/O by a static check (`io_reason`): no `open`, `print`,
  `input`, `exec`..., no I/O module (`socket`, `subprocess`, `shutil`, `pathlib`...), nothing of
  `os` but pure `os.path` helpers, no `sys.stdin`/`exit`, `io.open`..., and nothing that reaches
  them another way: module aliases (`posixpath.os`), introspection (`__globals__`), attributes
  by string (`generators.code.reach`). This keeps the data about computation; the sandbox
  still contains whatever the check misses;
- is self-contained: every free name is a builtin, a module-level absolute import or a
  module-level `NAME = ...` (whose own names resolve the same way); those lines are copied above
  the function, imports first, so `source` runs on its own.

Rejected candidates are emitted with their `_drop_reason` (the runner counts them); kept ones are
shuffled with the stage seed and cut to `max_functions`. Reading the corpus happens in the driver:
the sample needs the whole candidate list, and it is only source text (a few MB for the stdlib).

Files that are not Python source are skipped and counted per reason (`SKIP_REASONS`): the stage's
counters in the manifest (`files_read`, `files_skipped_<reason>`) and its report in the card say
how many; an empty corpus, or one where nothing could be read, is an error that says so.
"""

from __future__ import annotations

import ast
import builtins
import io
import logging
import random
import re
import subprocess
import tokenize
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from generators.code.reach import reach_reason
from generators.code.records import FUNCTION_SCHEMA, content_id
from synth.errors import SpecError
from synth.registry import register
from synth.sandbox import default_python
from synth.spec import InputFile, InputFolder, StageConfig
from synth.stage import DROP_REASON, TableStage

log = logging.getLogger(__name__)

IO_CALLS = frozenset({"open", "input", "print", "breakpoint", "exit", "quit", "exec", "eval", "compile",
                      "__import__", "help"})  # fmt: skip
"""Builtins that do I/O, or run or reach code other than the function's own."""

IO_MODULES = frozenset({
    "pathlib", "shutil", "tempfile", "glob", "fileinput", "filecmp", "linecache", "tokenize",
    "socket", "ssl", "select", "selectors", "socketserver", "asyncio", "urllib.request", "urllib.robotparser",
    "http.client", "http.server", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib", "nntplib", "xmlrpc",
    "webbrowser", "mailbox", "subprocess", "multiprocessing", "threading", "_thread", "concurrent", "signal",
    "pty", "tty", "termios", "fcntl", "mmap", "resource", "ctypes", "pwd", "grp", "spwd", "getpass",
    "platform", "sqlite3", "dbm", "shelve", "zipfile", "tarfile", "zipimport", "logging", "importlib",
    "pkgutil", "runpy", "site", "sysconfig", "pdb", "faulthandler", "atexit", "gc", "tracemalloc", "netrc",
    "mimetypes", "uuid", "locale", "syslog", "wave", "sndhdr", "imghdr",
    "builtins", "inspect", "pickle", "_pickle", "copyreg", "marshal", "code", "codeop", "posix", "nt", "_io",
    "_pyio", "_socket", "_thread", "_signal", "_posixsubprocess", "_ctypes", "_multiprocessing", "_posixshmem",
})  # fmt: skip
"""Modules (and their submodules) whose use means I/O, processes, threads or interpreter state."""

PURE_OS = frozenset({"path", "sep", "altsep", "extsep", "pathsep", "linesep", "curdir", "pardir", "name",
                     "fspath", "fsencode", "fsdecode"})  # fmt: skip
PURE_OS_PATH = frozenset({"join", "split", "splitext", "splitdrive", "basename", "dirname", "normpath",
                          "normcase", "commonprefix", "commonpath", "isabs", "sep", "altsep", "extsep"})  # fmt: skip
IO_SYS = frozenset({"stdin", "stdout", "stderr", "exit", "argv", "path", "modules", "settrace", "setprofile",
                    "setrecursionlimit", "setswitchinterval", "_getframe", "exc_info", "audit"})  # fmt: skip
IO_ATTRIBUTES = {
    "os": lambda attr: attr not in PURE_OS,
    "os.path": lambda attr: attr not in PURE_OS_PATH,
    "posixpath": lambda attr: attr not in PURE_OS_PATH,
    "ntpath": lambda attr: attr not in PURE_OS_PATH,
    "genericpath": lambda attr: attr not in PURE_OS_PATH,
    "sys": lambda attr: attr in IO_SYS,
    "io": lambda attr: attr in ("open", "open_code", "FileIO"),
    "gzip": lambda attr: attr in ("open", "GzipFile"),
    "bz2": lambda attr: attr in ("open", "BZ2File"),
    "lzma": lambda attr: attr in ("open", "LZMAFile"),
}
"""Modules with both pure and I/O parts: which attributes are I/O."""

STDLIB_SKIP = frozenset({"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
                         "dist-packages", "venv", "pydoc_data", "__pycache__", "distutils"})  # fmt: skip
"""Folders of the standard library that hold tests, GUIs, installers or third-party packages."""

_BUILTINS = frozenset(dir(builtins))

SKIP_REASONS = {
    "unreadable": "could not be read",
    "binary": "binary (NUL bytes)",
    "encoding": "not text in their declared encoding (UTF-8 when none is declared)",
    "syntax_error": "not valid Python",
    "empty": "empty",
}
"""Why a file (or a Parquet row) of the corpus gives no candidates, and how the card says it."""


class CodeFunctionsConfig(StageConfig):
    kind: Literal["code_functions"] = "code_functions"
    folder: InputFolder | None = Field(None, description="A folder of .py files (default: the standard library)")
    parquet: InputFile | None = Field(None, description="A Parquet file with one module's source per row")
    code_column: str = Field("code", description="Parquet: the column holding source text")
    python: str | None = Field(None, description="Standard library of this interpreter (default: the sandbox's)")
    max_functions: int = Field(300, ge=1, description="Kept functions to sample, at most")
    max_lines: int = Field(30, ge=2, description="Longest function kept, in source lines")
    min_lines: int = Field(2, ge=1, description="Shortest function kept, in source lines")

    @model_validator(mode="after")
    def _one_source(self):
        if self.folder is not None and self.parquet is not None:
            raise ValueError("give `folder` or `parquet`, not both (neither: the standard library)")
        return self


# ---------------------------------------------------------------- reading modules


def stdlib_folder(python: str | None = None) -> Path:
    """The standard library folder of `python` (default: the interpreter the sandbox runs)."""
    import os

    interpreter = python or default_python(os.geteuid() == 0)
    code = "import sysconfig; print(sysconfig.get_path('stdlib'))"
    out = subprocess.run([interpreter, "-S", "-c", code], capture_output=True, text=True, check=True, env={})
    return Path(out.stdout.strip())


@dataclass
class SourceReport:
    """What reading the corpus found: where, how many files (or rows), and which were skipped why."""

    where: str
    files: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return self.files - sum(self.skipped.values())

    def counters(self) -> dict[str, float]:
        return {"files_read": self.read, **{f"files_skipped_{r}": n for r, n in sorted(self.skipped.items())}}

    def skips_text(self) -> str:
        return ", ".join(f"{SKIP_REASONS[r]}: {n}" for r, n in sorted(self.skipped.items())) or "none"


def folder_modules(root: Path, skip: frozenset[str] = frozenset(),
                   report: SourceReport | None = None) -> Iterator[tuple[str, str]]:  # fmt: skip
    """(module name, source) of every .py file under `root` that is Python text, in a stable order;
    the others are counted in `report`."""
    report = report if report is not None else SourceReport(str(root))
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in skip for part in parts[:-1]):
            continue
        report.files += 1
        try:
            text = decode_source(path.read_bytes())
        except OSError:
            text = "unreadable"
        if text in SKIP_REASONS:
            report.skipped[text] += 1
            continue
        stem = () if path.stem == "__init__" else (path.stem,)
        yield ".".join(parts[:-1] + stem) or root.name, text


def decode_source(data: bytes) -> str:
    """The text of a source file, or the reason it has none (a key of `SKIP_REASONS`)."""
    if b"\0" in data:
        return "binary"
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)  # PEP 263 declarations
        return data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return "encoding"


def parquet_modules(path: Path, column: str, report: SourceReport) -> Iterator[tuple[str, str]]:
    table = pq.read_table(path)
    if column not in table.column_names:
        raise SpecError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)}); set `code_column`")
    for index, text in enumerate(table.column(column).to_pylist()):
        report.files += 1
        if not text:
            report.skipped["empty"] += 1
        elif "\0" in text:
            report.skipped["binary"] += 1
        else:
            yield f"{path.name}[{index}]", text


# ---------------------------------------------------------------- judging one function


def parse_module(text: str) -> ast.Module | None:
    """The module's tree, or None when it is not valid Python."""
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def function_candidates(
    text: str, module: str, max_lines: int = 30, min_lines: int = 2, tree: ast.Module | None = None
) -> Iterator[dict]:
    """Rows of `FUNCTION_SCHEMA` for the module-level functions of one module's source (`tree`: its
    parsed form, when the caller has it)."""
    tree = tree or parse_module(text)
    if tree is None:
        return
    lines = re.split(r"\r\n|\r|\n", text)  # as ast counts lines: not at form feeds, unlike splitlines()
    imports, constants = _module_imports(tree), _module_constants(tree, lines)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            def_source = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            reason = shape_reason(node, max_lines, min_lines) or io_reason(node, imports)
            prelude, missing = ({}, set()) if reason else _prelude(_free_names(node), imports, constants)
            if not reason and (missing or any(io_reason(constants[n][1], imports) for n in prelude if n in constants)):
                reason = "not_self_contained" if missing else "io"
            source = "\n".join(prelude.values()) + ("\n\n" if prelude else "") + def_source + "\n"
            yield {"function_id": content_id(source), "name": node.name, "module": module, "source": source,
                   "lines": node.end_lineno - node.lineno + 1, DROP_REASON: reason}  # fmt: skip


def shape_reason(fn: ast.FunctionDef | ast.AsyncFunctionDef, max_lines: int, min_lines: int) -> str | None:
    """Why a function is not a candidate by its form, or None."""
    own = list(_own_nodes(fn))
    a = fn.args
    checks = (
        ("async", isinstance(fn, ast.AsyncFunctionDef)),
        ("decorated", bool(fn.decorator_list)),
        ("no_arguments", not (a.posonlyargs or a.args or a.kwonlyargs or a.vararg or a.kwarg)),
        ("generator", any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in own)),
        ("no_return_value", not any(isinstance(n, ast.Return) and n.value is not None for n in own)),
        ("too_long", fn.end_lineno - fn.lineno + 1 > max_lines),
        ("too_short", fn.end_lineno - fn.lineno + 1 < min_lines),
    )
    return next((reason for reason, failed in checks if failed), None)


def io_reason(fn: ast.AST, imports: dict[str, tuple[str, str | None]]) -> str | None:
    """'io' when the function reaches file, network or process I/O by name; else None."""
    names = {**imports, **_local_imports(fn)}
    bound = _bound_names(fn)
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and (
            (node.id in IO_CALLS and node.id not in bound) or _is_io_module(*names.get(node.id, ("", None)))
        ):
            return "io"
        if isinstance(node, ast.Attribute) and _io_attribute(node, names):
            return "io"
    return reach_reason(fn, names, _is_io_module, frozenset(IO_ATTRIBUTES))


def _is_io_module(module: str, attribute: str | None) -> bool:
    """Whether a name bound to `module` (or to `attribute` of it) is I/O by itself."""
    if any(module == m or module.startswith(m + ".") for m in IO_MODULES):
        return True
    rule = IO_ATTRIBUTES.get(module)
    return rule is not None and attribute is not None and rule(attribute)


def _io_attribute(node: ast.Attribute, imports: dict[str, tuple[str, str | None]]) -> bool:
    """`os.remove`, `os.path.exists`, `sys.stdout`, `io.open`...: an I/O attribute of a mixed module."""
    module = _module_of(node.value, imports)
    rule = IO_ATTRIBUTES.get(module or "")
    return rule is not None and rule(node.attr)


def _module_of(node: ast.expr, imports: dict[str, tuple[str, str | None]]) -> str | None:
    """The dotted module an expression names (`os`, `path` from `from os import path`, `os.path`)."""
    if isinstance(node, ast.Name) and node.id in imports:
        module, attribute = imports[node.id]
        return module if attribute is None else f"{module}.{attribute}"
    if isinstance(node, ast.Attribute):
        parent = _module_of(node.value, imports)
        return f"{parent}.{node.attr}" if parent else None
    return None


# ---------------------------------------------------------------- names and imports


def _module_imports(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Names bound by module-level absolute imports: name -> (module, attribute or None)."""
    bound: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = (top, None)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            for alias in node.names:
                if alias.name != "*":
                    bound[alias.asname or alias.name] = (node.module, alias.name)
    return bound


def _local_imports(fn: ast.AST) -> dict[str, tuple[str, str | None]]:
    module = ast.Module(body=[n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    return _module_imports(module)


def _import_line(name: str, module: str, attribute: str | None) -> str:
    if attribute is None:
        return f"import {module}" if name == module else f"import {module} as {name}"
    return f"from {module} import {attribute}" + ("" if name == attribute else f" as {name}")


def _module_constants(tree: ast.Module, lines: list[str]) -> dict[str, tuple[str, ast.AST]]:
    """Module-level `NAME = expression` statements: name -> (their source, the statement)."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            constants[node.targets[0].id] = ("\n".join(lines[node.lineno - 1 : node.end_lineno]), node)
    return constants


def _prelude(
    free: set[str], imports: dict[str, tuple[str, str | None]], constants: dict[str, tuple[str, ast.AST]]
) -> tuple[dict[str, str], set[str]]:
    """What must precede the function so its free names resolve: import lines, then module-level
    constants (and what they need in turn), in that order; and the names nothing provides."""
    needed: dict[str, str] = {}
    missing: set[str] = set()
    todo = sorted(free)
    while todo:
        name = todo.pop()
        if name in needed or name in missing:
            continue
        if name in imports:
            needed[name] = _import_line(name, *imports[name])
        elif name in constants:
            needed[name] = constants[name][0]
            todo.extend(sorted(_free_names(constants[name][1]) - needed.keys()))
        else:
            missing.add(name)
    in_order = sorted(needed, key=lambda n: (n not in imports, _line_of(constants.get(n)), needed[n]))
    return {name: needed[name] for name in in_order}, missing


def _line_of(constant: tuple[str, ast.AST] | None) -> int:
    return constant[1].lineno if constant else 0


def _free_names(fn: ast.AST) -> set[str]:
    """Names read in the function that are not bound in it (an over-approximation of binding)."""
    loaded: set[str] = set()
    bound: set[str] = set()
    module_level: set[str] = set()  # `global x`: x lives at module level, so it must come along
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Global):
            module_level.update(node.names)
        else:
            bound.update(_binds(node, fn))
    return (loaded - bound - _BUILTINS) | module_level


def _bound_names(fn: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                bound.add(node.id)
        else:
            bound.update(_binds(node, fn))
    return bound


def _binds(node: ast.AST, fn: ast.AST) -> tuple[str, ...]:
    """Names a node other than ast.Name binds: parameters, nested defs, imports, `except as`."""
    if isinstance(node, ast.arg):
        return (node.arg,)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not fn:
        return (node.name,)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return tuple((a.asname or a.name).split(".")[0] for a in node.names)
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
        return (node.name,)
    return ()


def _own_nodes(fn: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not descending into nested functions, lambdas or classes."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


# ---------------------------------------------------------------- the stage


@dataclass
class CorpusSample:
    table: pa.Table  # every candidate: rejected ones with their reason, then the sampled kept ones
    not_sampled: int  # kept functions the sample left out
    source: SourceReport


def corpus_table(config: CodeFunctionsConfig, seed: int) -> CorpusSample:
    """All candidates: rejected ones with their reason, kept ones sampled to `max_functions`."""
    if config.parquet is not None:
        report = SourceReport(f"Parquet file {config.parquet}")
        modules = parquet_modules(config.parquet, config.code_column, report)
    elif config.folder is not None:
        report = SourceReport(f"folder {config.folder}")
        modules = folder_modules(config.folder, report=report)
    else:
        folder = stdlib_folder(config.python)
        report = SourceReport(f"standard library {folder}")
        modules = folder_modules(folder, STDLIB_SKIP, report)
    rows, seen = [], set()
    for module, text in modules:
        tree = parse_module(text)
        if tree is None:
            report.skipped["syntax_error"] += 1
            continue
        for row in function_candidates(text, module, config.max_lines, config.min_lines, tree):
            if row["function_id"] not in seen:
                seen.add(row["function_id"])
                rows.append(row)
    kept = [r for r in rows if r[DROP_REASON] is None]
    random.Random(seed).shuffle(kept)
    sample = kept[: config.max_functions]
    table = pa.Table.from_pylist([r for r in rows if r[DROP_REASON] is not None] + sample, schema=FUNCTION_SCHEMA)
    return CorpusSample(table, len(kept) - len(sample), report)


def corpus_error(sample: CorpusSample) -> str | None:
    """Why a corpus gives nothing to work on, or None."""
    source = sample.source
    if source.files == 0:
        return f"code_functions: the corpus is empty: no Python source in the {source.where}"
    if source.read == 0:
        return (f"code_functions: none of the {source.files} files in the {source.where} is Python source "
                f"({source.skips_text()})")
    if sample.table.column(DROP_REASON).null_count == 0:
        return (f"code_functions: no function of the {source.read} files read from the {source.where} passed the "
                f"static checks (rejected: {sample.table.num_rows}; files skipped: {source.skips_text()})")  # fmt: skip
    return None


def report_text(sample: CorpusSample) -> str:
    """The stage's section of the dataset card: what was read, skipped, rejected and sampled."""
    source, table = sample.source, sample.table
    sampled = table.column(DROP_REASON).null_count
    rejected = Counter(r for r in table.column(DROP_REASON).to_pylist() if r is not None)
    lines = [
        f"Source: the {source.where}: {source.files} files, {source.read} read as Python, "
        f"{source.files - source.read} skipped.",
        "",
        *[f"- skipped, {SKIP_REASONS[r]}: {n}" for r, n in sorted(source.skipped.items())],
        "",
        f"Functions: {table.num_rows + sample.not_sampled} candidates; {sum(rejected.values())} rejected by the "
        f"static checks ({', '.join(f'{r}: {n}' for r, n in sorted(rejected.items())) or 'none'}); "
        f"{sampled} sampled, {sample.not_sampled} more passed but were not sampled.",
    ]
    return "\n".join(lines) + "\n"


@register
class CodeFunctions(TableStage):
    kind = "code_functions"
    Config = CodeFunctionsConfig
    description = "Functions from the standard library, a folder or Parquet of code, statically filtered"
    source = True

    def transform(self, table: None) -> pa.Table:
        """One task reads the corpus: functions are sampled from all of it, with the stage's seed."""
        sample = corpus_table(self.config, self.ctx.stage_seed)
        table, source = sample.table, sample.source
        sampled = table.column(DROP_REASON).null_count
        log.info("code_functions: %d files, %d read, skipped: %s; %d functions rejected, %d sampled, %d more passed "
                 "but were not sampled", source.files, source.read, source.skips_text(), table.num_rows - sampled,
                 sampled, sample.not_sampled)  # fmt: skip
        self.ctx.count(functions_not_sampled=sample.not_sampled, **source.counters())
        error = corpus_error(sample)
        if error:
            raise SpecError(error)
        report = self.ctx.output_dir / "_reports" / self.ctx.stage_name / "report.md"
        report.parent.mkdir(parents=True, exist_ok=True)
        tmp = report.with_name(".report.md.tmp")
        tmp.write_text(report_text(sample))
        tmp.replace(report)  # the card reads it (synth.card)
        return table
