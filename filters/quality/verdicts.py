"""Two yes/no verdicts on an instruction record: is the instruction sensible, is the output correct?

The questions a reader asks of a sample before training on it (and the done-when of the issue that
added this asks of the instruct pipeline), put to an LLM one record at a time. The judge answers
two lines, `Instruction: yes|no` and `Output: yes|no`, read leniently by `parse_verdicts` (bold,
"Yes.", either order); an answer without a line is unparsed (None), never a guess.

`verdict_agreement` measures a judge against hand-labelled records (tests/data/judge_labelled.jsonl
holds them): the share of labels each verdict matches, an unparsed verdict counting as a miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from synth.llm import ChatRequest, LLMClient, SamplingParams

PROMPT = """You review one example from a dataset that teaches an AI assistant to follow instructions.

Instruction:
{instruction}

Input:
{input}

Output:
{output}

Answer two questions.
1. Is the instruction sensible: a complete, clear task that a text-only assistant can do with the input given? Answer no if it is cut off, ends in an open quote or a colon with nothing after it, asks to write more task instructions, or is nonsense.
2. Is the output correct: does it do what the instruction asks, with right facts, arithmetic and code? Answer no if it is wrong, incomplete, repeats the instruction, loops, or refuses.

Answer in exactly this format and nothing else:
Instruction: yes or no
Output: yes or no"""

SAMPLING = SamplingParams(max_tokens=12, temperature=0.0)
"""Greedy, and just long enough for the two lines: the same verdicts on every run."""

_SLOTS = re.compile(r"\{(instruction|input|output)\}")
_VERDICT = {name: re.compile(rf"\b{name}\b\W{{0,6}}\b(yes|no)\b", re.IGNORECASE) for name in ("instruction", "output")}


@dataclass(frozen=True)
class Verdicts:
    sensible: bool | None
    """The instruction is a sensible task; None when the judge's answer had no such line."""
    correct: bool | None
    """The output answers it correctly; None when unparsed."""
    answer: str
    """The judge's words, kept for a reader to check."""


def request(instruction: str, input: str, output: str, prompt: str = PROMPT) -> ChatRequest:
    """The judge's chat request; slots filled in one pass, so braces in the texts stay as they are."""
    values = {"instruction": instruction.strip(), "input": input.strip() or "(none)", "output": output.strip()}
    return [{"role": "user", "content": _SLOTS.sub(lambda m: values[m.group(1)], prompt)}]


def parse_verdicts(text: str) -> Verdicts:
    def verdict(name: str) -> bool | None:
        match = _VERDICT[name].search(text.replace("*", ""))
        return None if match is None else match.group(1).lower() == "yes"

    return Verdicts(verdict("instruction"), verdict("output"), text.strip())


def judge(llm: LLMClient, records: list[dict], sampling: SamplingParams = SAMPLING) -> list[Verdicts]:
    """Verdicts on records with `instruction`, `input` and `output`, in one batched call."""
    requests = [request(r["instruction"] or "", r.get("input") or "", r["output"] or "") for r in records]
    return [parse_verdicts(c.text) for c in llm.generate(requests, sampling)] if requests else []


def verdict_agreement(llm: LLMClient, labelled: list[dict]) -> dict[str, float]:
    """Shares of hand labels (`sensible`, `good` for the output) the judge's verdicts match."""
    verdicts = judge(llm, labelled)
    n = len(labelled)
    return {
        "instruction": sum(v.sensible == r["sensible"] for v, r in zip(verdicts, labelled)) / n,
        "output": sum(v.correct == r["good"] for v, r in zip(verdicts, labelled)) / n,
        "unparsed": sum(v.sensible is None or v.correct is None for v in verdicts) / n,
    }
