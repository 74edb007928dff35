"""`judge_report`: what an LLM judge says of a fixed sample of the finished records, for the card.

A global stage that drops nothing and passes its input through. It takes `records` (30) rows
chosen by the run seed (those with the smallest hash of seed and `id`, so the same records are
judged whatever order or blocks the data comes in), asks the judge of `filters.quality.verdicts`
whether each instruction is sensible and each output correct, and writes
`OUTPUT/_reports/<stage>/`: `report.md` (a card section: the shares and every judged record with
its verdicts) and `report.json` (the numbers; its `summary` line is what `synth inspect` prints).

Put it last, after dedup, with the strongest local model (`llm:` naming, say,
`{backend: local, engine: llama.cpp, model: qwen2.5-coder-1.5b}`). Only the sampled rows are
gathered on the driver (the hashes are computed and sorted on Ray).
"""

from __future__ import annotations

import logging
from typing import Literal

import pyarrow as pa
import xxhash
from pydantic import Field

from filters.quality.verdicts import Verdicts, judge
from synth import io
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import GlobalStage

log = logging.getLogger(__name__)

KEY = "_judge_sample_key"
COLUMNS = ["id", "instruction", "input", "output"]


class JudgeReportConfig(StageConfig):
    kind: Literal["judge_report"] = "judge_report"
    llm: str = Field("default", description="Which entry of the spec's `llm:` section judges")
    records: int = Field(30, ge=1, description="Records in the judged sample, drawn from the run seed")


@register
class JudgeReport(GlobalStage):
    kind = "judge_report"
    Config = JudgeReportConfig
    description = "LLM verdicts (sensible instruction? correct output?) on a fixed seeded sample, for the card"

    def apply(self, ds):
        cfg, ctx = self.config, self.ctx
        sample = seeded_sample(ds, cfg.records, ctx.seed)
        log.info("judge_report: judging %d sampled records on the driver with llm %r", len(sample), cfg.llm)
        llm = ctx.llm(cfg.llm)
        try:
            verdicts = judge(llm, sample)
            model = llm.model_id
        finally:
            llm.close()
        self._write(summarise(verdicts, model), sample, verdicts)
        return ds

    def _write(self, metrics: dict, sample: list[dict], verdicts: list[Verdicts]) -> None:
        target = self.ctx.output_dir / "_reports" / self.ctx.stage_name
        io.remove_temp_siblings(target)
        tmp = io.temp_sibling(target)
        tmp.mkdir(parents=True)
        judged = [{**row, "sensible": v.sensible, "correct": v.correct, "judge_answer": v.answer}
                  for row, v in zip(sample, verdicts)]  # fmt: skip
        io.write_json_atomic(tmp / "report.json", {**metrics, "records": judged})
        (tmp / "report.md").write_text(render(self.ctx.stage_name, metrics, judged))
        io.commit_dir(tmp, target)


def seeded_sample(ds, n: int, seed: int) -> list[dict]:
    """The n rows with the smallest xxh64 of (seed, id), in that order; gathers only those rows."""
    def keyed(batch: pa.Table) -> pa.Table:
        ids = batch.column("id").to_pylist()
        keys = [xxhash.xxh64_intdigest(f"{seed}:{i}".encode()) >> 1 for i in ids]  # int64-safe
        return batch.select([c for c in COLUMNS if c in batch.column_names]).append_column(KEY, pa.array(keys, pa.int64()))

    rows = ds.map_batches(keyed, batch_format="pyarrow").sort(KEY).limit(n).take_all()
    return [{c: row.get(c) or "" for c in COLUMNS} for row in rows]


def summarise(verdicts: list[Verdicts], model: str) -> dict:
    n = len(verdicts)
    sensible = sum(v.sensible is True for v in verdicts)
    correct = sum(v.correct is True for v in verdicts)
    unparsed = sum(v.sensible is None or v.correct is None for v in verdicts)
    share = lambda k: round(k / n, 4) if n else None  # noqa: E731
    summary = (f"judge ({model}) on {n} sampled records: instructions sensible {sensible}/{n}, "
               f"outputs correct {correct}/{n}" + (f", {unparsed} unparsed" if unparsed else ""))  # fmt: skip
    return {"judge": model, "judged": n, "sensible": sensible, "correct": correct, "unparsed": unparsed,
            "sensible_share": share(sensible), "correct_share": share(correct), "summary": summary}  # fmt: skip


def _mark(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + "…"


def render(stage: str, m: dict, judged: list[dict]) -> str:
    rows = [f"| {i} | {_cell(r['instruction'])} | {_cell(r['input'], 80)} | {_cell(r['output'])} "
            f"| {_mark(r['sensible'])} | {_mark(r['correct'])} |" for i, r in enumerate(judged, 1)]  # fmt: skip
    return "\n".join([
        f"LLM judge (`{m['judge']}`) on {m['judged']} records drawn from the run seed: "
        f"**{m['sensible']} of {m['judged']} instructions sensible, {m['correct']} of {m['judged']} outputs correct**"
        + (f" ({m['unparsed']} answers unparsed)." if m["unparsed"] else "."),
        "",
        "| # | instruction | input | output | sensible | correct |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Every record in full, with the judge's words: `_reports/{stage}/report.json`.",
        "",
    ])  # fmt: skip

