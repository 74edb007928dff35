"""Case2Code prompts: each usable test case of a function becomes one instruction/response record.

Formats, one chosen per case with a seed derived from the stage seed, the function and the case
(weights in the spec), each a text template under `templates/`:

- `infer_function` (Case2Code proper): input/output pairs shown, the function is the answer;
- `predict_output`: the function and one call shown, the call's output is the answer;
- `complete_function`: the function cut after its header, docstring and a few body lines, plus
  input/output pairs; the whole function is the answer.

The pairs shown are this case first, then up to `examples_per_prompt - 1` other usable cases of
the same function. The function is shown (and given as the answer) without its docstring's
examples and result comments (`generators.code.leaks.shown_source`); a case whose prompt still
gives its answer away is dropped as `answer_in_prompt`. Records follow
`generators.code.records.CODE_SCHEMA`.
"""

from __future__ import annotations

import ast
import functools
import random
from pathlib import Path
from string import Template
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from generators.code.leaks import answer_in_prompt, shown_source
from generators.code.records import content_id, to_case_table
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import MapStage, derive_seed, mark_dropped

TEMPLATE_DIR = Path(__file__).parent / "templates"

Format = Literal["infer_function", "predict_output", "complete_function"]


@functools.cache
def _template(name: str) -> Template:
    return Template((TEMPLATE_DIR / f"{name}.txt").read_text())


def render(template: str, **values: str) -> str:
    """The template `templates/<template>.txt` with its $placeholders filled in."""
    return _template(template).substitute(values).strip()


class Case2CodeConfig(StageConfig):
    kind: Literal["case2code"] = "case2code"
    formats: dict[Format, float] = Field(
        {"infer_function": 0.5, "predict_output": 0.3, "complete_function": 0.2},
        description="Relative weight of each prompt format",
    )
    examples_per_prompt: int = Field(4, ge=1, description="Input/output pairs shown in infer and complete prompts")
    max_cases_per_function: int = Field(8, ge=1, description="Records made from one function, at most")

    @field_validator("formats")
    @classmethod
    def _some_weight(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()) or not any(w > 0 for w in value.values()):
            raise ValueError("expected weights >= 0, at least one of them > 0")
        return value



def shown_output(text: str, is_error: bool) -> str:
    """An output as a doctest would show it."""
    return f"Traceback (most recent call last):\n  ...\n{text}" if is_error else text


def examples_text(calls: list[str], outputs: list[str], errors: list[bool]) -> str:
    return "\n".join(f">>> {c}\n{shown_output(o, e)}" for c, o, e in zip(calls, outputs, errors))


def partial_function(source: str, name: str, rng: random.Random) -> str:
    """`source` cut after the function's header and docstring plus up to half its other lines."""
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
    body = fn.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    head_end = body[0].end_lineno if has_doc and len(body) > 1 else body[0].lineno - 1
    lines = source.splitlines()
    extra = rng.randint(0, max((fn.end_lineno - head_end) // 2, 0))
    return "\n".join(lines[: head_end + extra])


def format_case(fmt: str, row: dict, shown: list[int], rng: random.Random, source: str) -> tuple[str, str]:
    """(instruction, response) of case `shown[0]` of a function row in format `fmt`, showing `source`."""
    calls = [row["inputs"][i] for i in shown]
    outputs = [row["outputs"][i] for i in shown]
    errors = [row["case_status"][i] == "raised" for i in shown]
    if fmt == "predict_output":
        return render("predict_output", source=source, call=calls[0]), outputs[0]
    examples = examples_text(calls, outputs, errors)
    if fmt == "infer_function":
        return render("infer_function", name=row["name"], examples=examples), source
    partial = partial_function(source, row["name"], rng)
    return render("complete_function", partial=partial, examples=examples), source


@register
class Case2Code(MapStage):
    kind = "case2code"
    Config = Case2CodeConfig
    description = "Case2Code: one instruction/response record per usable test case, in a seeded format"

    def process(self, batch: pa.Table) -> pa.Table:
        made = [pair for row in batch.to_pylist() for pair in self.cases(row)]
        records = [record for record, _ in made]
        self.ctx.count(**{f"format_{f}": sum(r["format"] == f for r in records) for f in self.config.formats})
        return mark_dropped(to_case_table(records), [reason for _, reason in made])

    def cases(self, row: dict) -> list[tuple[dict, str | None]]:
        """(record, drop reason or None) per usable case of a function row."""
        cfg = self.config
        usable = [i for i, ok in enumerate(row["case_ok"]) if ok][: cfg.max_cases_per_function]
        names, weights = list(cfg.formats), list(cfg.formats.values())
        source = shown_source(row["source"], row["name"]).strip()
        records = []
        for case in usable:
            rng = random.Random(derive_seed(self.ctx.stage_seed, row["function_id"], case))
            fmt = rng.choices(names, weights)[0]
            others = [i for i in usable if i != case]
            shown = [case] + rng.sample(others, min(cfg.examples_per_prompt - 1, len(others)))
            instruction, response = format_case(fmt, row, shown, rng, source)
            leaks = answer_in_prompt(fmt, instruction, response, row["inputs"][case], row["name"], source)
            records.append((self._record(row, case, shown, fmt, instruction, response),
                            "answer_in_prompt" if leaks else None))  # fmt: skip
        return records

    def _record(self, row: dict, case: int, shown: list[int], fmt: str, instruction: str, response: str) -> dict:
        return {
            "id": content_id(fmt, instruction, response), "kind": "code", "generator": "case2code",
            "run_id": self.ctx.run_id, "seed": self.ctx.seed, "model": row["input_origins"][case], "format": fmt,
            "instruction": instruction, "response": response, "function_id": row["function_id"],
            "function_name": row["name"], "module": row["module"], "source": row["source"],
            "input": row["inputs"][case], "output": row["outputs"][case],
            "output_is_error": row["case_status"][case] == "raised",
            "example_inputs": [row["inputs"][i] for i in shown], "example_outputs": [row["outputs"][i] for i in shown],
        }  # fmt: skip
