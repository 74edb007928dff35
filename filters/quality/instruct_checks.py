"""Simple quality checks for instruct records: lengths, empty or refused answers, echoes.

Adds score columns (`instruction_words`, `output_words`, `echo_rouge_l`, `asks_long_form`, `asks_code`) and one
drop reason per row, first failing check wins:

- `empty_output`: the output is blank;
- `instruction_too_short` / `instruction_too_long`: instruction words outside the bounds;
- `output_too_short` / `output_too_long`: output words outside the bounds;
- `missing_input`: the instruction works on a text it neither holds nor is given ("Translate the
  sentence into Chinese.", "Identify the genre of the text.", "Analyze a given argument.") and the
  input is empty (`refers_to_input_pattern`; an instruction that asks for code or long-form
  writing, or holds its text after a colon or in quotes, is exempt). The answer to such a task is
  made up: 21 of qwen2.5-coder-1.5b's 354 Self-Instruct records of one run, 10 of them through its
  own judge, and 4 of the 11 outputs a hand reading of that run's sample found wrong. The things
  named include a book, a film, a room or a phrase ("Describe the main character of the
  book.", "Describe the atmosphere of the room.": both kept by the judge in a later run; not "the
  puzzle": "Solve the puzzle to find the number that is both a cube and a square" states it);
- `too_short_for_request`: the instruction asks for long-form writing (an essay, a story, "in
  detail", "at least 200 words"; `long_form_pattern`) and the output has fewer than
  `long_form_min_words` words;
- `no_code_for_code_request`: the instruction asks for code to be written ("Write a Go function
  that...", `code_request_pattern`) and the output holds none (a fence or a line that reads as
  code): Self-Instruct's input-first instances answer such a task with the function's result
  ("8") or a description of it;
- `refusal`: the output contains a refusal phrase ("as an ai", "i cannot"...);
- `echoes_instruction`: the output's ROUGE-L F against the instruction is at least
  `echo_threshold`, i.e. the answer mostly repeats the question.
"""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa
from pydantic import Field

from filters.quality.answer_shape import holds_code
from generators.instruct.rouge import rouge_l
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage

REFUSAL_PHRASES = (
    "as an ai", "as a language model", "i'm sorry, but", "i am sorry, but", "i cannot", "i can't help",
    "i am unable to", "i'm unable to", "i do not have the ability", "i don't have access",
)  # fmt: skip

LONG_FORM = (
    r"\b(?:write|compose|draft|create)\s+(?:an?\s+)?(?:(?:long|detailed|short|persuasive|personal|narrative|"
    r"argumentative|informative|descriptive|\w+-\w+)\s+)*(?:essay|article|report|blog post|speech|story|cover letter)s?\b"
    r"|\b(?:explain|describe|discuss)\b[^.?!]{0,60}\bin detail\b"
    r"|\bat least (?:\d+|two|three|four|five) (?:words|sentences|paragraphs)\b"
    r"|\b(?:\d+|two|three|four|five)[- ]paragraphs?\b"
)
"""Case-insensitive: instructions that ask for more than a few sentences."""
CODE_REQUEST = (
    r"^(?:please\s+)?(?:write|implement|create|develop|code|build|complete|fix|refactor)\b[^.?!]*"
    r"\b(?:function|program|script|code|snippet|query|regex|regular expression)\b"
)
"""Case-insensitive: instructions that open by asking for code to be written (not explained). Not
"class" or "method": "Write a list of activities for a class" asks for none."""
_PROSE = r"(?:text|story|passage|paragraph|argument|article|email|poem|essay|review|letter|document|conversation|dialogue|speech)"
_TEXTS = (rf"(?:{_PROSE}|sentences?|statement|tweet|message|list|table|code|data|"
          r"book|novel|movie|film|song|painting|picture|image|photo|room|phrase|word)")
REFERS_TO_INPUT = (
    rf"\b(?:the|this|these)\s+(?:(?:given|following|provided|above|below|attached)\s+)?{_TEXTS}\b"
    rf"|\ba\s+given\s+{_PROSE}\b"
)
"""Case-insensitive: the instruction works on a text it names as known ("the sentence", "a given
article"). Not "a given number": a function's argument."""
HOLDS_ITS_TEXT = re.compile(r":\s*\S|[\"“][^\"”]{8,}")
"""The instruction carries the text itself: after a colon, or in quotes."""


class InstructChecksConfig(StageConfig):
    kind: Literal["instruct_checks"] = "instruct_checks"
    min_instruction_words: int = Field(3, ge=0)
    max_instruction_words: int = Field(300, ge=1)
    min_output_words: int = Field(1, ge=0)
    max_output_words: int = Field(1000, ge=1)
    refusal_phrases: tuple[str, ...] = Field(REFUSAL_PHRASES, description="Case-insensitive substrings")
    echo_threshold: float = Field(0.8, gt=0, le=1, description="Drop at this ROUGE-L F to the instruction")
    long_form_pattern: str = Field(LONG_FORM, description="Regex: the instruction asks for long-form writing")
    long_form_min_words: int = Field(30, ge=0, description="Output words such an instruction needs")
    code_request_pattern: str = Field(CODE_REQUEST, description="Regex: the instruction asks for code to be written")
    refers_to_input_pattern: str | None = Field(
        REFERS_TO_INPUT, description="Regex: the instruction works on a text it must be given (null: no check)"
    )


@register
class InstructChecks(FilterStage):
    kind = "instruct_checks"
    Config = InstructChecksConfig
    description = "Length bounds, empty, refused or too brief outputs, outputs that echo the instruction"

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        instructions = batch.column("instruction").to_pylist()
        outputs = batch.column("output").to_pylist()
        instruction_words = [len(text.split()) for text in instructions]
        output_words = [len(text.split()) for text in outputs]
        echo = [rouge_l(out, ins) if out.strip() else 0.0 for ins, out in zip(instructions, outputs)]
        asks = re.compile(self.config.long_form_pattern, re.IGNORECASE)
        long_form = [asks.search(text) is not None for text in instructions]
        wants_code = re.compile(self.config.code_request_pattern, re.IGNORECASE)
        asks_code = [wants_code.search(text) is not None for text in instructions]
        inputs = batch.column("input").to_pylist()
        pattern = self.config.refers_to_input_pattern
        refers = re.compile(pattern, re.IGNORECASE) if pattern is not None else None
        missing = [refers is not None and _missing_input(refers, text, inp or "", lf or code)
                   for text, inp, lf, code in zip(instructions, inputs, long_form, asks_code)]  # fmt: skip
        rows = zip(outputs, instruction_words, output_words, echo, long_form, asks_code, missing)
        reasons = [self._reason(*row) for row in rows]
        columns = {
            "instruction_words": pa.array(instruction_words, pa.int32()),
            "output_words": pa.array(output_words, pa.int32()),
            "echo_rouge_l": pa.array(echo, pa.float32()),
            "asks_long_form": pa.array(long_form, pa.bool_()),
            "asks_code": pa.array(asks_code, pa.bool_()),
        }
        return columns, reasons

    def _reason(
        self, output: str, instruction_words: int, output_words: int, echo: float, long_form: bool, asks_code: bool,
        missing_input: bool,
    ) -> str | None:
        cfg = self.config
        lowered = output.lower()
        checks = (
            ("empty_output", not output.strip()),
            ("instruction_too_short", instruction_words < cfg.min_instruction_words),
            ("instruction_too_long", instruction_words > cfg.max_instruction_words),
            ("output_too_short", output_words < cfg.min_output_words),
            ("output_too_long", output_words > cfg.max_output_words),
            ("missing_input", missing_input),
            ("too_short_for_request", long_form and output_words < cfg.long_form_min_words),
            ("no_code_for_code_request", asks_code and not holds_code(output)),
            ("refusal", any(phrase.lower() in lowered for phrase in cfg.refusal_phrases)),
            ("echoes_instruction", echo >= cfg.echo_threshold),
        )
        return next((reason for reason, failed in checks if failed), None)


def _missing_input(refers: re.Pattern, instruction: str, input: str, exempt: bool) -> bool:
    """The instruction names a text it must be given, does not hold it, and the input is empty."""
    if exempt or input.strip() or HOLDS_ITS_TEXT.search(instruction):
        return False
    return refers.search(instruction) is not None
