"""The stage registry: specs name stages by `kind:`, and this maps kinds to classes.

Built-in stages register when their module is imported (`@register`). `BUILTIN_STAGES` maps
each built-in kind to its module so that a spec imports only the modules of the kinds it names:
torch, SDV and diffusers stay unloaded for an instruct pipeline, and Airflow parses DAG files fast.
Plugin packages add stages through the `synth.stages` entry point group, each entry point naming
a module to import or a Stage class.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from synth.spec import TrainStageConfig
from synth.stage import Stage, TrainStage

_STAGES: dict[str, type[Stage]] = {}

BUILTIN_STAGES = {
    "self_instruct": "generators.instruct.self_instruct",
    "evol_instruct": "generators.instruct.evol_instruct",
    "instruct_checks": "filters.quality.instruct_checks",
    "text_heuristics": "filters.quality.heuristics",
    "perplexity": "filters.quality.perplexity",
    "llm_judge": "filters.quality.llm_judge",
    "judge_report": "filters.quality.judge_report",
    "verdict_filter": "filters.quality.verdict_filter",
    "exact_dedup": "filters.dedup.exact",
    "minhash_dedup": "filters.dedup.minhash",
    "semantic_dedup": "filters.dedup.semantic",
    "code_functions": "generators.code.corpus",
    "code_load_check": "generators.code.load_check",
    "code_inputs": "generators.code.inputs",
    "code_coverage": "generators.code.coverage",
    "code_execute": "generators.code.execute",
    "code_checks": "filters.quality.code_checks",
    "code_determinism": "filters.quality.code_checks",
    "case2code": "generators.code.prompts",
    "tabular_synth": "generators.tabular.source",
    "tabular_report": "generators.tabular.report",
    "phantom_images": "generators.image.phantoms",
    "image_folder": "generators.image.folder",
    "diffusion": "generators.image.diffusion_stage",
    "image_eval": "generators.image.evaluate",
    "image_checks": "filters.quality.image_checks",
    "image_phash_dedup": "filters.quality.image_checks",
    "image_memorisation": "filters.quality.image_checks",
    "records": "generators.records",
    "train": "synth.train.stage",
}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to specs under `cls.kind`."""
    existing = _STAGES.get(cls.kind)
    if existing is not None and existing is not cls:
        raise ValueError(f"stage kind {cls.kind!r} is registered twice: {existing} and {cls}")
    if cls.Config.model_fields["kind"].annotation is str:
        raise TypeError(f"{cls.__name__}.Config must declare `kind: Literal[{cls.kind!r}]`")
    _check_train_config(cls)
    _STAGES[cls.kind] = cls
    return cls


def _check_train_config(cls: type[Stage]) -> None:
    """A training stage's config is a TrainStageConfig, and only a training stage's: the spec
    loader tells training stages from record stages by their config, the runner by their class."""
    is_train, has_train_config = issubclass(cls, TrainStage), issubclass(cls.Config, TrainStageConfig)
    if is_train and not has_train_config:
        raise TypeError(f"{cls.__name__} is a TrainStage: its Config ({cls.Config.__name__}) must be based on "
                        "synth.spec.TrainStageConfig")  # fmt: skip
    if has_train_config and not is_train:
        raise TypeError(f"{cls.__name__}.Config ({cls.Config.__name__}) is a TrainStageConfig: the stage must be a "
                        "synth.stage.TrainStage")  # fmt: skip


_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    for ep in entry_points(group="synth.stages"):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Stage):
            register(obj)
    _plugins_loaded = True


def stage_class(kind: str) -> type[Stage]:
    if kind not in _STAGES and kind in BUILTIN_STAGES:
        importlib.import_module(BUILTIN_STAGES[kind])
    if kind not in _STAGES:
        _load_plugins()
    if kind not in _STAGES:
        known = sorted(set(_STAGES) | set(BUILTIN_STAGES))
        raise KeyError(f"unknown stage kind {kind!r}; expected one of: {', '.join(known)}")
    return _STAGES[kind]


def all_stages() -> dict[str, type[Stage]]:
    for module in sorted(set(BUILTIN_STAGES.values())):
        importlib.import_module(module)
    _load_plugins()
    return dict(sorted(_STAGES.items()))
