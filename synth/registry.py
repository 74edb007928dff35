"""The stage registry: specs name stages by `kind:`, and this maps kinds to classes.

Built-in stages register when their module is imported (`@register`); `load_builtin_stages`
imports them all. Plugin packages add stages through the `synth.stages` entry point group,
each entry point naming a module to import or a Stage class.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from synth.stage import Stage

_STAGES: dict[str, type[Stage]] = {}

BUILTIN_MODULES = (
    "generators.instruct.self_instruct",
    "generators.instruct.evol_instruct",
    "filters.quality.instruct_checks",
)


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to specs under `cls.kind`."""
    existing = _STAGES.get(cls.kind)
    if existing is not None and existing is not cls:
        raise ValueError(f"stage kind {cls.kind!r} is registered twice: {existing} and {cls}")
    if cls.Config.model_fields["kind"].annotation is str:
        raise TypeError(f"{cls.__name__}.Config must declare `kind: Literal[{cls.kind!r}]`")
    _STAGES[cls.kind] = cls
    return cls


_loaded = False


def load_builtin_stages() -> None:
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group="synth.stages"):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Stage):
            register(obj)
    _loaded = True


def stage_class(kind: str) -> type[Stage]:
    load_builtin_stages()
    if kind not in _STAGES:
        raise KeyError(f"unknown stage kind {kind!r}; expected one of: {', '.join(sorted(_STAGES))}")
    return _STAGES[kind]


def all_stages() -> dict[str, type[Stage]]:
    load_builtin_stages()
    return dict(sorted(_STAGES.items()))
