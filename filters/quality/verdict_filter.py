"""Drop instruction records an LLM judge calls not sensible or not correct.

`verdict_filter` puts `filters.quality.verdicts`' two yes/no questions (is the instruction a
sensible task, is the output correct) to the LLM its `llm:` names, for every record, and adds
`judged_sensible` and `judged_correct` (bool; null when the judge answered neither yes nor no).
Drops `judged_not_sensible`, then `judged_incorrect`; an unparsed verdict keeps the record.

Measured with qwen2.5-coder-1.5b on 66 hand-labelled records (README, "Measured value of the
instruction data"): when it calls an output correct it is right 17 times of 19, and it calls 7 of
24 right outputs wrong, so the filter trades about a third of the good records for dropping most
of the wrong ones. Worth it where the generator is weak and records are cheap to make.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from filters.quality.verdicts import judge
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage


class VerdictFilterConfig(StageConfig):
    kind: Literal["verdict_filter"] = "verdict_filter"
    llm: str = Field("default", description="Which entry of the spec's `llm:` section judges")


@register
class VerdictFilter(FilterStage):
    kind = "verdict_filter"
    Config = VerdictFilterConfig
    description = "An LLM's yes/no verdicts: drop records whose instruction is not sensible or output not correct"
    stateful = True

    def setup(self) -> None:
        self.llm = self.ctx.llm(self.config.llm)

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        verdicts = judge(self.llm, batch.select(["instruction", "input", "output"]).to_pylist())
        sensible = [v.sensible for v in verdicts]
        correct = [v.correct for v in verdicts]
        reasons = [
            "judged_not_sensible" if s is False else "judged_incorrect" if c is False else None
            for s, c in zip(sensible, correct)
        ]
        columns = {"judged_sensible": pa.array(sensible, pa.bool_()), "judged_correct": pa.array(correct, pa.bool_())}
        return columns, reasons
