"""The training spec: what `synth train SPEC` reads; a pipeline's `kind: train` stage holds the same fields.

One YAML file describes a training run: the Parquet dataset to read and how to turn its rows
into tokens, the model to start from (the embedded SmolLM2, a local Hugging Face folder, or a
small one from scratch, optionally with LoRA), the optimisation schedule, and where it runs.
Relative paths are taken from the working directory, like a pipeline's `output:`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from synth.errors import SynthError
from synth.schedule import AirflowOptions
from synth.spec import StrictModel
from synth.yaml_source import read_yaml, spec_data, spec_error

EMBEDDED = "embedded"
SCRATCH = "scratch"


class TrainError(SynthError):
    """Training cannot start or go on: bad data, a missing model, an output that is not ours."""


class DataSpec(StrictModel):
    """Which Parquet dataset to read and how its rows become training tokens."""

    path: Path | None = Field(
        None, description="A synth output folder (its data/ is read) or a folder of .parquet files; "
        "left out in a pipeline's train stage, which trains on the run's OUTPUT/data")
    format: Literal["sft", "pretrain"] = Field(
        "sft", description="sft: chat-templated prompt and response, loss on the response only; "
        "pretrain: plain text, loss on every token")
    prompt_columns: list[str] | None = Field(
        None, min_length=1, description="sft: columns joined (blank line between, empty ones skipped) "
        "into the user turn; default by the dataset's `kind`: instruct [instruction, input], code [instruction]")
    response_column: str | None = Field(
        None, description="sft: the assistant turn; default by `kind`: instruct `output`, code `response`")
    text_column: str = Field("text", description="pretrain: the column of plain text")
    system_prompt: str | None = Field(None, description="sft: a system turn; default: the chat template's own")
    eval_fraction: float = Field(0.05, ge=0, le=0.5, description="Rows held out for eval (by hash of id and seed)")
    eval_sequences: int = Field(32, ge=1, description="At most this many packed held-out sequences are evaluated")
    held_out: Path | None = Field(
        None, description="sft: a JSONL file of examples kept out of the data (say, the seed tasks a "
        "self_instruct stage held out: OUTPUT/_reports/self_instruct/held_out_tasks.jsonl); the loss of their "
        "responses is measured before the first step and at every eval (held_out_loss)")


class ScratchModel(StrictModel):
    """A small Llama-style decoder trained from random weights (for pretraining and tests)."""

    hidden_size: int = Field(256, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(704, ge=8)

    @model_validator(mode="after")
    def _heads_divide(self) -> ScratchModel:
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden_size must be a multiple of heads, and heads a multiple of kv_heads")
        return self


class LoraSpec(StrictModel):
    """Low-rank adapters through `peft`; the saved model has them merged into plain weights."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1)


class ModelSpec(StrictModel):
    base: str = Field(EMBEDDED, description="embedded (SmolLM2-135M-Instruct), scratch, or a Hugging Face model folder")
    scratch: ScratchModel = ScratchModel()
    tokenizer: str | None = Field(None, description="scratch: a tokenizer folder; default: the embedded model's")
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False

    @field_validator("base")
    @classmethod
    def _base_exists(cls, value: str) -> str:
        if value in (EMBEDDED, SCRATCH):
            return value
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(f"model folder not found: {path} "
                             f"(expected {EMBEDDED}, {SCRATCH} or a Hugging Face model folder)")
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a Hugging Face model folder: it has no config.json")
        return value

    @model_validator(mode="after")
    def _scratch_only(self) -> ModelSpec:
        if self.base != SCRATCH and ({"scratch", "tokenizer"} & self.model_fields_set):
            raise ValueError(f"scratch and tokenizer apply only to base: {SCRATCH}")
        return self


class Resources(StrictModel):
    workers: int = Field(1, ge=1, description="1: train in this process; more: Ray Train workers (DDP)")
    use_gpu: bool | None = Field(None, description="Default: CUDA when this machine (or the Ray cluster) has it")
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray Train workers only")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per worker; default: its CPUs")
    peak_tflops: float | None = Field(None, gt=0, description="GPU peak for MFU; default: known bf16 peaks by name")


class TrainSettings(StrictModel):
    """How to train: the fields a training spec and a pipeline's `kind: train` stage share."""

    seed: int = 0
    output: Path | None = Field(None, description="Default: train/ inside the dataset's folder")
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    seq_len: int = Field(512, ge=16, description="Tokens per packed sequence")
    batch_size: int = Field(16, ge=1, description="Sequences per optimiser step, all workers together")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward pass on one worker")
    steps: int = Field(300, ge=1, description="Optimiser steps")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate, reached after warmup")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The cosine decays towards lr * min_lr_ratio")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay on matrices; none on norms and biases")
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 turns clipping off")
    eval_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1, description="Console lines; metrics.jsonl gets every step")
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainSettings:
        per_step = self.micro_batch_size * self.resources.workers
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size x workers "
                f"({self.micro_batch_size} x {self.resources.workers})")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self

    @property
    def grad_accum(self) -> int:
        """Micro-batches each worker accumulates per optimiser step."""
        return self.batch_size // (self.micro_batch_size * self.resources.workers)


class TrainSpec(TrainSettings):
    """A training run on its own (`synth train SPEC`, a training DAG)."""

    name: str = Field("train", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    airflow: AirflowOptions = AirflowOptions()

    def fingerprint(self, data_files: list[tuple[str, int]]) -> str:
        """Hash of what decides the trained weights: the spec (less output and placement) and the data files."""
        payload = {"spec": self.model_dump(mode="json", exclude={"output", "resources", "airflow"}), "data": data_files}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_train_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainSpec:
    """Read and validate a training spec; errors name the file, the line and the key."""
    path = Path(path)
    tree = read_yaml(path)
    data = spec_data(path, tree, "training spec", overrides, TrainError)
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(path, tree, exc) from None
