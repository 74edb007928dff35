"""Reading spec files: YAML that remembers the line of every key, and errors that name file, line and key.

`read_yaml` gives the tree of a file; `plain_data` turns it into plain dicts and lists for pydantic;
`spec_data` checks that the top level is a mapping and puts command-line overrides over it;
`spec_error` turns a validation error into one line: `pipelines/instruct.yaml:14: stages[1].rounds:
input should be a valid integer, got 'two'`. Pipeline specs (`synth.run_spec`) and training specs
(`synth.train.spec`) both load through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from synth.errors import SpecError, SynthError
from synth.spec import format_loc



class _LineLoader(yaml.SafeLoader):
    """Safe YAML loader that remembers the line of every mapping key and sequence item."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, value_node in node.value:
        lines[key_node.value] = value_node.start_mark.line + 1
    return _Located(mapping, lines, node.start_mark.line + 1)


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> list:
    items = loader.construct_sequence(node, deep=True)
    return _LocatedList(items, [n.start_mark.line + 1 for n in node.value], node.start_mark.line + 1)


class _Located(dict):
    def __init__(self, data: dict, lines: dict, line: int):
        super().__init__(data)
        self.lines, self.line = lines, line


class _LocatedList(list):
    def __init__(self, data: list, lines: list, line: int):
        super().__init__(data)
        self.lines, self.line = lines, line


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def line_of(tree: Any, loc: tuple) -> int | None:
    """The line of the deepest node of `loc` that the YAML tree knows."""
    line, node = getattr(tree, "line", None), tree
    for part in loc:
        if isinstance(node, _Located) and part in node:
            line, node = node.lines.get(part, line), node[part]
        elif isinstance(node, _LocatedList) and isinstance(part, int) and part < len(node):
            line, node = node.lines[part], node[part]
        else:
            break
    return line


def plain_data(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: plain_data(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain_data(v) for v in node]
    return node


def _explain(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    got = err.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"{msg[0].lower()}{msg[1:]}, got {got!r}"
    return msg[0].lower() + msg[1:]


def spec_error(path: Path, tree: Any, err: ValidationError | list, prefix: tuple = ()) -> SpecError:
    errors = err.errors() if isinstance(err, ValidationError) else err
    first = errors[0]
    loc = prefix + tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    line = line_of(tree, loc)
    where = f"{path}:{line}" if line else str(path)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return SpecError(f"{where}: {format_loc(loc)}: {_explain(first)}{more}")


def spec_data(path: Path, tree: Any, what: str, overrides: dict[str, Any] | None = None,
              error: type[SynthError] = SpecError) -> dict[str, Any]:
    """A spec file's top-level mapping as plain data for pydantic, with the non-None `overrides`
    (command-line options) put over it; anything but a mapping is `error`, naming the file."""
    if not isinstance(tree, dict):
        raise error(f"{path}: expected a mapping of {what} keys at the top level")
    data = plain_data(tree)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return data


def read_yaml(path: Path, text: str | None = None) -> Any:
    """The YAML tree of a spec file (or of its `text`, already read), lines remembered."""
    try:
        text = path.read_text() if text is None else text
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{line}: malformed YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: malformed YAML: {exc}") from None
