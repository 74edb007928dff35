"""Two yes/no verdicts on an instruction record: is the instruction sensible, is the output correct?

The questions a reader asks of a sample before training on it (and the done-when of the issue that
added this asks of the instruct pipeline), put to an LLM one question per request. Each prompt shows
worked examples (written for this module, none from the hand-labelled tests) and ends in
`Sensible:` or `Correct:`; a GBNF grammar (honoured by llama.cpp, engine or server) holds the
answer to `yes` or `no`, and `parse_yes_no` reads the first word of a backend that ignores it. An
answer that starts with neither is unparsed (None), never a guess.

Measured with qwen2.5-coder-1.5b (README, "Measured value of the instruction data"): asked both
questions in one prompt without examples it said "yes" to nearly everything, the constant-yes
baseline; the examples of wrong answers (a wrong sum, a label where a story or a function was
asked for) are what lets it say "no".

`verdict_agreement` measures a judge against hand-labelled records (tests/data/judge_*.jsonl hold
them): the share of labels each verdict matches, an unparsed verdict counting as a miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from synth.llm import ChatRequest, LLMClient, SamplingParams

SENSIBLE_PROMPT = """Decide whether an instruction from a dataset of tasks for an AI assistant is a sensible task: complete, clear, and doable with the input given. Examples:

Instruction: Write a limerick about a cat.
Input: (none)
Sensible: yes

Instruction: Describe the main causes of
Input: (none)
Sensible: no (cut off)

Instruction: Write a Java method that returns the length of a string.
Input: (none)
Sensible: yes

Instruction: Write 6 more tasks like these, numbered 7 to 12.
Input: (none)
Sensible: no (asks for more tasks, not a task)

Instruction: Summarise the text below:
Input: (none)
Sensible: no (the text is missing)

Instruction: Explain how vaccines train the immune system.
Input: (none)
Sensible: yes

Instruction: The moon is bright tonight. This statement is an opinion.
Input: (none)
Sensible: no (a statement, not a task)

Instruction: Find the largest number in the list.
Input: 4, 19, 7
Sensible: yes

Now this one:

Instruction: {instruction}
Input: {input}
Sensible:"""

CORRECT_PROMPT = """Decide whether an AI assistant's answer to a task is correct: right facts, arithmetic and code, and the kind of answer the task asks for. Examples:

Instruction: What is 9 plus 6?
Answer: 15
Correct: yes

Instruction: What is 9 plus 6?
Answer: 9 plus 6 is 16.
Correct: no (9 + 6 = 15)

Instruction: Write a Python function that doubles a number.
Answer: def double(x):
    return 2 * x
Correct: yes

Instruction: Write a Python function that doubles a number.
Answer: doubled
Correct: no (a word, not a function)

Instruction: Write a short story about a lost dog.
Answer: negative
Correct: no (a label, not a story)

Instruction: What is the capital of France?
Answer: Lyon
Correct: no (the capital is Paris)

Instruction: Name a fruit that is yellow.
Answer: Banana
Correct: yes

Now this one:

Instruction: {instruction}
Input: {input}
Answer: {output}
Correct:"""

SAMPLING = SamplingParams(max_tokens=2, temperature=0.0, grammar='root ::= "yes" | "no"')
"""Greedy and held to one word: the same verdicts on every run."""

_SLOTS = re.compile(r"\{(instruction|input|output)\}")
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Verdicts:
    sensible: bool | None
    """The instruction is a sensible task; None when the judge's answer was neither yes nor no."""
    correct: bool | None
    """The output answers it correctly; None when unparsed."""
    answer: str
    """The judge's words, kept for a reader to check."""


def request(prompt: str, instruction: str, input: str, output: str = "") -> ChatRequest:
    """One question's chat request; slots filled in one pass, so braces in the texts stay as they are."""
    values = {"instruction": instruction.strip(), "input": input.strip() or "(none)", "output": output.strip()}
    return [{"role": "user", "content": _SLOTS.sub(lambda m: values[m.group(1)], prompt)}]


def parse_yes_no(text: str) -> bool | None:
    match = _YES_NO.match(text.replace("*", ""))
    return None if match is None else match.group(1).lower() == "yes"


def judge(llm: LLMClient, records: list[dict], sampling: SamplingParams = SAMPLING) -> list[Verdicts]:
    """Verdicts on records with `instruction`, `input` and `output`: both questions of every record
    in one batched call."""
    answers = ask(llm, [SENSIBLE_PROMPT] * len(records) + [CORRECT_PROMPT] * len(records), records * 2, sampling)
    sensible, correct = answers[: len(records)], answers[len(records) :]
    return [Verdicts(parse_yes_no(s), parse_yes_no(c), f"Sensible: {s}\nCorrect: {c}")
            for s, c in zip(sensible, correct)]  # fmt: skip


def ask(llm: LLMClient, prompts: list[str], records: list[dict], sampling: SamplingParams = SAMPLING) -> list[str]:
    """The judge's answer to each prompt (`SENSIBLE_PROMPT` or `CORRECT_PROMPT`) about its record, in one call."""
    requests = [request(p, r["instruction"] or "", r.get("input") or "", r["output"] or "") for p, r in zip(prompts, records)]
    return [c.text.strip() for c in llm.generate(requests, sampling)] if requests else []


def verdict_agreement(llm: LLMClient, labelled: list[dict]) -> dict[str, float]:
    """Shares of hand labels (`sensible`, `good` for the output) the judge's verdicts match."""
    verdicts = judge(llm, labelled)
    n = len(labelled)
    return {
        "instruction": sum(v.sensible == r["sensible"] for v, r in zip(verdicts, labelled)) / n,
        "output": sum(v.correct == r["good"] for v, r in zip(verdicts, labelled)) / n,
        "unparsed": sum(v.sensible is None or v.correct is None for v in verdicts) / n,
    }
