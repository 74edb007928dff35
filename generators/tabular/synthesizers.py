"""One verb set over every tabular synthesizer: `fit`, then `sample`; `save` and `load` a folder.

- `gaussian_copula`, `ctgan`, `tvae`: SDV's synthesizers, as baselines a spec may pick. They get
  SDV metadata for the learned columns and SDV's constraints where SDV has one.
- `tabddpm`: ours (`generators.tabular.tabddpm`).

Every synthesizer sees and makes only the learned columns (`TableMeta.learned`); generated
columns and types are the stage's business. `sample(rows, seed, conditions)` is a pure function
of the fitted model and its arguments: the same seed gives the same rows.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

import numpy as np
import pandas as pd
import torch
from pydantic import Field, TypeAdapter

from generators.tabular.data import TableMeta
from generators.tabular.tabddpm import TabDDPM, TabDDPMParams
from synth.errors import SynthError
from synth.spec import StrictModel
from synth.stage import derive_seed


class GaussianCopulaParams(StrictModel):
    model: Literal["gaussian_copula"] = "gaussian_copula"
    default_distribution: Literal["norm", "beta", "truncnorm", "uniform", "gamma", "gaussian_kde"] = "beta"


class CTGANParams(StrictModel):
    model: Literal["ctgan"] = "ctgan"
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(500, ge=2, description="A multiple of pac")
    pac: int = Field(10, ge=1)
    embedding_dim: int = Field(128, ge=1)
    generator_dim: list[int] = [256, 256]
    discriminator_dim: list[int] = [256, 256]
    generator_lr: float = Field(2e-4, gt=0)
    discriminator_lr: float = Field(2e-4, gt=0)
    enable_gpu: bool = Field(True, description="Use CUDA when present")


class TVAEParams(StrictModel):
    model: Literal["tvae"] = "tvae"
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(500, ge=2)
    embedding_dim: int = Field(128, ge=1)
    compress_dims: list[int] = [128, 128]
    decompress_dims: list[int] = [128, 128]
    enable_gpu: bool = Field(True, description="Use CUDA when present")


SynthesizerParams = Annotated[
    Union[TabDDPMParams, CTGANParams, TVAEParams, GaussianCopulaParams], Field(discriminator="model")
]
_PARAMS = TypeAdapter(SynthesizerParams)


def parse_params(data: dict) -> SynthesizerParams:
    """Synthesizer params from plain data, picked by its `model` key."""
    return _PARAMS.validate_python(data)


class Synthesizer(Protocol):
    name: str
    params: StrictModel

    def fit(self, train: pd.DataFrame, meta: TableMeta, constraints: list, seed: int) -> None: ...
    def sample(self, num_rows: int, seed: int, conditions: dict[str, Any] | None = None) -> pd.DataFrame: ...
    def save(self, folder: Path) -> None: ...


class SDVSynthesizer:
    """An SDV single-table synthesizer behind our verbs; SDV's own warnings are silenced."""

    def __init__(self, params: GaussianCopulaParams | CTGANParams | TVAEParams):
        self.params = params
        self.name = params.model
        self.model = None

    def _sdv_class(self):
        from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer, TVAESynthesizer

        classes = {"gaussian_copula": GaussianCopulaSynthesizer, "ctgan": CTGANSynthesizer, "tvae": TVAESynthesizer}
        return classes[self.name]

    def fit(self, train: pd.DataFrame, meta: TableMeta, constraints: list, seed: int) -> None:
        seed_everything(seed)
        settings = self.params.model_dump(exclude={"model"})
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = self._sdv_class()(meta.sdv_metadata(), **kwargs)
            sdv_constraints = [c.sdv(meta) for c in constraints if c.sdv(meta) is not None]
            if sdv_constraints:
                self.model.add_constraints(sdv_constraints)
            self.model.fit({"table": train[meta.learned]})

    def sample(self, num_rows: int, seed: int, conditions: dict[str, Any] | None = None) -> pd.DataFrame:
        from sdv.sampling import Condition

        self._seed_sampling(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if conditions:
                    out = self.model.sample_from_conditions([Condition(conditions, num_rows=num_rows)])
                else:
                    out = self.model.sample(num_rows)
            except (ValueError, RuntimeError) as exc:
                raise SynthError(f"{self.name}: sampling with conditions {conditions} failed: {exc}") from None
        return out["table"].reset_index(drop=True)

    def _seed_sampling(self, seed: int) -> None:
        """SDV seeds sampling only through private hooks: the model's RNGs and each RDT transformer's."""
        self.model.reset_sampling()
        self.model._set_random_state(seed % 2**32)
        transformers = self.model._data_processor._hyper_transformer.field_transformers.values()
        for i, transformer in enumerate(transformers):
            if transformer is not None:
                state = np.random.RandomState(derive_seed(seed, "rdt", i) % 2**32)
                transformer.set_random_state(state, "reverse_transform")

    def save(self, folder: Path) -> None:
        self.model.save(str(folder / "sdv.pkl"))

    @classmethod
    def load(cls, folder: Path, params) -> SDVSynthesizer:
        from sdv.utils import load_synthesizer as sdv_load

        synthesizer = cls(params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            synthesizer.model = sdv_load(str(folder / "sdv.pkl"))
        return synthesizer


def make_synthesizer(params: SynthesizerParams) -> Synthesizer:
    return TabDDPM(params) if isinstance(params, TabDDPMParams) else SDVSynthesizer(params)


def save_synthesizer(synthesizer: Synthesizer, folder: Path) -> None:
    """The model's files plus `synthesizer.json` (its params), so `load_synthesizer` needs nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    synthesizer.save(folder)
    (folder / "synthesizer.json").write_text(json.dumps(synthesizer.params.model_dump(mode="json"), indent=2))


def load_synthesizer(folder: Path) -> Synthesizer:
    params = parse_params(json.loads((folder / "synthesizer.json").read_text()))
    if isinstance(params, TabDDPMParams):
        return TabDDPM.load(folder)
    return SDVSynthesizer.load(folder, params)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch global RNGs (SDV's models draw from them while fitting)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
