"""LLM-as-judge: an LLM grades each response to its instruction from 1 to 10 against a rubric.

`llm_judge` asks the named LLM (`llm:` in the spec; default `default`) with `prompt`, which has
`{instruction}` and `{response}` slots and asks for a `Score:` line and a `Reasons:` line.
The answer is parsed leniently (`parse_judgement`): "Score: 7", "**Score:** 7/10", "Rating: 7",
"7 out of 10", or a bare "7". Scores outside 1-10 count as unparsed.

Adds `judge_score` (float32; null when blank or unparsed) and `judge_reasons` (string: the
judge's reasons, else its whole answer). Drops `empty_text` (blank response, not sent),
`judge_score_low` (below `min_score`) and `judge_unparsed` (unless `on_unparsed: keep`).
Greedy decoding by default, so a resumed run gets the same grades (and the LLM cache answers).

To measure a dataset rather than filter it, `min_score: null` drops nothing for a low grade, and
`sample_share` judges a fixed sample: a record is judged when a hash of its `id` (else its text)
falls in that share, so the same records are judged in every run; the rest keep a null score.
The filter report in the dataset card then shows the grades' histogram. `judge_agreement`
measures a judge against hand-labelled (instruction, response, good) examples.
A 135M model is a poor judge: its grades are close to noise; use a strong model behind the
`openai` backend for a judge worth its cost.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import xxhash

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from filters.quality.text import resolve_columns, texts
from synth.llm import SamplingParams
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage

if TYPE_CHECKING:
    from synth.llm import LLMClient

PROMPT = """Rate how well the response answers the instruction, on a scale of 1 to 10.

Rubric:
- 10: correct, complete and clear; does exactly what the instruction asks.
- 7-9: correct and helpful, with small omissions or awkward wording.
- 4-6: partly correct, incomplete, or padded with text the instruction did not ask for.
- 2-3: mostly wrong, off-topic or unhelpful.
- 1: empty, nonsense, a refusal, or a repetition of the instruction.

Instruction:
{instruction}

Response:
{response}

Answer in exactly this format:
Score: <a number from 1 to 10>
Reasons: <one or two sentences>"""

_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_PATTERNS = [
    re.compile(rf"\b(?:score|rating|grade)\b\W{{0,6}}{_NUMBER}", re.IGNORECASE),
    re.compile(rf"{_NUMBER}\s*(?:/|out of)\s*10\b", re.IGNORECASE),
    re.compile(rf"^\W*{_NUMBER}\W*$"),
]
_SLOTS = re.compile(r"\{(instruction|response)\}")
_REASONS = re.compile(r"\b(?:reasons?|explanation|justification)\b\W{0,4}(.*)", re.IGNORECASE | re.DOTALL)


class JudgeSampling(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0)


class LLMJudgeConfig(StageConfig):
    kind: Literal["llm_judge"] = "llm_judge"
    llm: str = Field("default", description="Which entry of the spec's `llm:` section judges")
    prompt: str = Field(PROMPT, description="The rubric prompt, with {instruction} and {response} slots")
    instruction_columns: list[str] = Field(
        ["instruction", "input"], min_length=1, description="Joined into the instruction; missing ones are skipped"
    )
    response_column: str | None = Field(None, description="Default: response, output or text, as the data has")
    min_score: float | None = Field(5.0, ge=1, le=10, description="Drop below this score; null: measure only")
    sample_share: float = Field(1.0, gt=0, le=1, description="Judge this fixed share of records (by id hash)")
    on_unparsed: Literal["drop", "keep"] = Field("drop", description="keep: an unparsed grade keeps the record")
    sampling: JudgeSampling = JudgeSampling()

    @field_validator("prompt")
    @classmethod
    def _has_slots(cls, prompt: str) -> str:
        for slot in ("{instruction}", "{response}"):
            if slot not in prompt:
                raise ValueError(f"the prompt must contain {slot}")
        return prompt


def parse_judgement(text: str) -> tuple[float | None, str]:
    """(score in 1..10 or None, reasons) from a judge's answer."""
    score = None
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(text.strip())
        if match:
            value = float(match.group(1))
            score = value if 1 <= value <= 10 else None
            break
    reasons = _REASONS.search(text)
    return score, (reasons.group(1) if reasons else text).strip()


def fill_prompt(prompt: str, instruction: str, response: str) -> str:
    """One pass over the slots, not str.format: the texts may hold braces or slot names of their own."""
    values = {"instruction": instruction, "response": response}
    return _SLOTS.sub(lambda m: values[m.group(1)], prompt)


@register
class LLMJudge(FilterStage):
    kind = "llm_judge"
    Config = LLMJudgeConfig
    description = "LLM-as-judge: a 1-10 grade of each response against a rubric, with reasons"
    stateful = True

    def setup(self) -> None:
        self.llm = self.ctx.llm(self.config.llm)

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        cfg = self.config
        present = [name for name in cfg.instruction_columns if name in batch.column_names]
        if not present:
            raise ValueError(
                f"instruction_columns: none of {cfg.instruction_columns} is in the data {batch.column_names}"
            )
        instructions = texts(batch, tuple(present))
        response_columns = resolve_columns(batch.schema, [cfg.response_column] if cfg.response_column else None)
        responses = texts(batch, response_columns)
        keys = batch.column("id").to_pylist() if "id" in batch.column_names else responses
        asked = [i for i, response in enumerate(responses) if response.strip() and self._sampled(keys[i] or "")]
        requests = [self._request(instructions[i].strip(), responses[i].strip()) for i in asked]
        sampling = SamplingParams(**cfg.sampling.model_dump(), seed=self.ctx.stage_seed)
        answers = self.llm.generate(requests, sampling) if requests else []
        scores: list[float | None] = [None] * len(responses)
        reasons: list[str | None] = [None] * len(responses)
        for i, answer in zip(asked, answers):
            scores[i], reasons[i] = parse_judgement(answer.text)
        sent = set(asked)
        drops = [self._drop(bool(responses[i].strip()), i in sent, score) for i, score in enumerate(scores)]
        return {"judge_score": pa.array(scores, pa.float32()), "judge_reasons": pa.array(reasons, pa.string())}, drops

    def _request(self, instruction: str, response: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": fill_prompt(self.config.prompt, instruction, response)}]

    def _sampled(self, key: str) -> bool:
        share = self.config.sample_share
        return share >= 1 or xxhash.xxh64_intdigest(key.encode()) < share * 2**64

    def _drop(self, blank: bool, asked: bool, score: float | None) -> str | None:
        if not blank:
            return "empty_text"
        if not asked:
            return None  # outside the judged sample
        if score is None:
            return "judge_unparsed" if self.config.on_unparsed == "drop" else None
        low = self.config.min_score is not None and score < self.config.min_score
        return "judge_score_low" if low else None


def judge_agreement(llm: LLMClient, labelled: list[tuple[str, str, bool]], min_score: float = 5.0,
                    prompt: str = PROMPT, max_tokens: int = 48) -> tuple[float, list[float | None]]:  # fmt: skip
    """(share of labelled (instruction, response, good) examples where "score >= min_score" matches
    the label, the scores); an unparsed grade counts as disagreement."""
    requests = [[{"role": "user", "content": fill_prompt(prompt, i, r)}] for i, r, _ in labelled]
    answers = llm.generate(requests, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    scores = [parse_judgement(a.text)[0] for a in answers]
    agree = sum(s is not None and (s >= min_score) == good for s, (_, _, good) in zip(scores, labelled))
    return agree / len(labelled), scores
