"""`kind: train`: the LLM training stage, last in a pipeline's `stages:`.

It takes the fields of a training spec (`synth.train.spec.TrainSettings`: data format, model,
schedule, `resources.workers`...) and trains on the run's own `OUTPUT/data` once it is written,
into `OUTPUT/train/` unless `output:` says otherwise (`synth.train.run_training`). Its name (the
stage's, default `train`) names the training run. A pipeline's `train:` section is the same
stage written apart: the loader appends it to `stages:`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from synth.errors import SpecError
from synth.registry import register
from synth.spec import TrainStageConfig
from synth.stage import TrainStage
from synth.train.spec import TrainSettings, TrainSpec


class LLMTrainConfig(TrainSettings, TrainStageConfig):
    kind: Literal["train"] = "train"


@register
class LLMTrain(TrainStage):
    kind = "train"
    Config = LLMTrainConfig
    description = "Fine-tune or pretrain a causal LM on the finished dataset (synth.train); resumes from checkpoints"

    def check_inputs(self) -> None:
        super().check_inputs()
        self.train_spec()  # the training run's name
        own = self.ctx.output_dir / "data"
        given = self.config.data.path
        if given is not None and Path(given).resolve() != own.resolve():
            raise SpecError(f"stage {self.ctx.stage_name!r}: data.path: leave it out in a pipeline: the train stage "
                            f"trains on the run's own data ({own})")

    def train_spec(self) -> TrainSpec:
        fields = self.config.model_dump(exclude={"kind", "name"})
        return TrainSpec.model_validate({**fields, "name": self.ctx.stage_name})

    def train(self, data_dir: Path, *, overwrite: bool = False, ray_address: str | None = None) -> Path:
        from synth.train import run_training  # torch and transformers load only when training

        return run_training(self.train_spec(), data_dir, overwrite=overwrite, ray_address=ray_address)
