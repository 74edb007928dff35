"""Self-Instruct (Wang et al., 2023): bootstrap new tasks from a small set of human-written ones.

One round, repeated until `num_instructions` machine-written instructions are kept:

1. Instruction generation. Each prompt shows `tasks_per_prompt` (8) tasks, `machine_per_prompt`
   (2) of them from the machine-written pool and the rest human seeds (seeds fill in while the
   pool is empty), and asks for more, sampled with the paper's presence penalty and stopped at
   the number after the last one asked for. A round sends `prompts_per_round` prompts in one
   batched `generate` call and parses the numbered tasks out of each completion; a completion cut
   off by `max_tokens` is dropped whole (`truncated_response`), as in the paper.
2. Instruction filtering, in order: length in words outside [min_words, max_words], a word a
   text model cannot act on (image, draw, video...), starts with punctuation, starts with a
   non-ASCII character, ROUGE-L F above `rouge_threshold` against any instruction in the pool
   (seeds included). A kept instruction joins the pool at once, so the next is compared with it.
3. Classification identification: an instruction that opens with a verb asking for a text
   (write, explain, translate...) is not classification, without asking; each of the others gets
   the paper's Yes/No question, batched, whose worked examples are a balanced set (half Yes, half
   No) drawn once per run from the seed tasks by their `is_classification` mark, answered under a
   Yes/No grammar where the engine takes one (local llama.cpp).
4. Instance generation, batched: output-first for classification tasks (every class label, each
   followed by an input of that class, so the labels do not all collapse to the most obvious
   one), input-first for the others (several instances per task; one for a task that needs no
   input, whose answer is the whole output, not a list split in parts). Worked examples come as earlier
   chat turns: built-in tasks with several instances (`templates/self_instruct_instance_examples.jsonl`),
   then seed tasks of the same kind with two or more, so the model sees answers with several
   instances about other tasks rather than one example inside the prompt to copy.
5. Instance filtering: unparsable, empty output, output equal to input, input or output ending
   in ":" (cut short), too long, duplicate, and the same input with different outputs (every
   instance of that input is dropped), a second answer without input. A completion cut off by
   `max_tokens` loses its last
   instance (`truncated_instance`).

Each kept instance is one record (`generators.instruct.records`). Every rejected candidate is
counted (`ctx.count(drop_<reason>=n)`) and returned as a row with `_drop_reason` set, so the
runner counts it and can write it for audit. The loop is sequential and holds the model, so the
whole bootstrap runs inside one Ray task; its table joins the dataset by object reference.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from generators.instruct.prompts import JUDGE, TEMPLATE_DIR, Sampling, few_shot_request, render, user_request
from generators.instruct.records import make_record, to_table
from generators.instruct.rouge import RougeLPool
from synth.errors import SpecError
from synth.llm import ChatRequest, Completion, LLMClient
from synth.registry import register
from synth.spec import InputFile, LLMSpec, StageConfig, format_loc
from synth.stage import StageContext, TableStage, derive_seed

log = logging.getLogger(__name__)

BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
"""Words of tasks a text-only model cannot do (from the paper's filter)."""

_BLACKLIST_RE = re.compile(r"\b(?:" + "|".join(map(re.escape, BLACKLIST)) + r")\b", re.IGNORECASE)

WRITING_VERBS = frozenset({
    "write", "explain", "describe", "generate", "translate", "list", "compose", "create", "develop", "discuss",
    "summarize", "summarise", "suggest", "rewrite", "solve", "calculate", "compute", "design", "give", "name",
    "provide", "outline", "draft", "implement", "convert", "propose", "make", "plan", "brainstorm", "elaborate",
    "paraphrase", "why",
})  # fmt: skip
"""First words of instructions that ask for a text to be written, never a label picked from a few."""


class SelfInstructConfig(StageConfig):
    kind: Literal["self_instruct"] = "self_instruct"
    seed_tasks: InputFile = Field(
        Path("seeds/instruct_seed_tasks.jsonl"),
        validate_default=True,
        description="JSONL of human-written tasks, relative to the spec file",
    )
    llm: str = Field("default", description="Name of a backend in the spec's `llm:` section")
    num_instructions: int = Field(100, ge=1, description="Machine-written instructions to keep")
    prompts_per_round: int = Field(8, ge=1, description="Prompts sent together in one generate call")
    tasks_per_prompt: int = Field(8, ge=2, description="In-context tasks shown per prompt")
    machine_per_prompt: int = Field(2, ge=0, description="How many of those come from the machine pool")
    new_tasks_per_prompt: int = Field(8, ge=1, description="New tasks each prompt asks for")
    max_rounds: int = Field(200, ge=1, description="Give up after this many rounds, target or not")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="Drop if ROUGE-L F to the pool is above")
    max_instances_per_task: int = Field(3, ge=1)
    max_instance_words: int = Field(300, ge=1, description="Input plus output words, at most")
    classify_examples: int = Field(8, ge=2, description="Worked examples in the Yes/No prompt, half of each answer")
    instance_examples: int = Field(2, ge=0, description="Seed tasks with several instances shown per instance "
                                   "prompt, after the built-in examples")
    instances_per_prompt: int = Field(3, ge=1, description="Instances an input-first prompt asks for")
    hold_out: int = Field(0, ge=0, description="Seed tasks kept out of generation, drawn from the run seed and "
                          "written to OUTPUT/_reports/<stage>/held_out_tasks.jsonl: human answers a model trained "
                          "on the data never saw (`synth train`'s data.held_out measures its loss on them)")
    task_sampling: Sampling = Sampling(max_tokens=320, temperature=0.7, presence_penalty=1.5)
    instance_sampling: Sampling = Sampling(max_tokens=200, temperature=0.5)


# ---------------------------------------------------------------- seed tasks


class _SeedInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = ""
    output: str = Field(min_length=1)


class _SeedLine(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the paper's files also carry `id` and `name`
    instruction: str = Field(min_length=1)
    instances: list[_SeedInstance] = Field(min_length=1)
    is_classification: bool


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    instances: tuple[tuple[str, str], ...]  # (input, output)
    is_classification: bool


def load_seed_tasks(path: Path) -> list[SeedTask]:
    """Read the seed JSONL; any bad line is a SpecError naming the file and line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read seed tasks: {exc.strerror}") from None
    tasks = [_parse_seed_line(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not tasks:
        raise SpecError(f"{path}: no seed tasks")
    return tasks


def split_held_out(seeds: list[SeedTask], n: int, seed: int) -> tuple[list[SeedTask], list[SeedTask]]:
    """(seeds to generate from, n seeds held out), drawn from `seed`; both keep the file's order."""
    held = set(random.Random(derive_seed(seed, "hold_out")).sample(range(len(seeds)), n))
    return [s for i, s in enumerate(seeds) if i not in held], [s for i, s in enumerate(seeds) if i in held]


def held_out_rows(tasks: list[SeedTask]) -> list[dict[str, str]]:
    """One instruct row (instruction, input, output) per instance of the held-out tasks."""
    return [{"instruction": t.instruction, "input": inp, "output": out} for t in tasks for inp, out in t.instances]


def _parse_seed_line(line: str, where: str) -> SeedTask:
    try:
        seed = _SeedLine.model_validate(json.loads(line))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{where}: not valid JSON: {exc.msg}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(f"{where}: {format_loc(err['loc'])}: {err['msg'].lower()}") from None
    instances = tuple((i.input, i.output) for i in seed.instances)
    return SeedTask(seed.instruction.strip(), instances, seed.is_classification)


# ---------------------------------------------------------------- parsing and filters

_NUMBERED_ITEM = re.compile(r"^[\s*#>]*(?:task\s*)?(?:\d{1,3}\s*[.):]|[a-z]\))\s*", re.IGNORECASE | re.MULTILINE)


def parse_tasks(text: str) -> list[str]:
    """The numbered (or "a)" lettered) tasks of a completion."""
    items = [_clean_task(part) for part in _NUMBERED_ITEM.split(text)[1:]]
    return [item for item in items if item]


def _clean_task(part: str) -> str:
    """First line of an item, without markdown emphasis or wrapping quotes."""
    line = part.strip().split("\n", 1)[0]
    line = re.sub(r"^(?:task|instruction)\s*:\s*", "", line.replace("**", ""), flags=re.IGNORECASE)
    line = re.sub(r"^(?:[-*]|\d{1,3}\s*[.)])\s+", "", line)  # a second marker: "1. 1. Do X", "- Do X"
    return " ".join(line.strip().strip("\"'`").split())


def instruction_drop_reason(text: str, min_words: int = 3, max_words: int = 150) -> str | None:
    """The paper's heuristic filters (all but ROUGE-L); None keeps the instruction."""
    words = len(text.split())
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    if _BLACKLIST_RE.search(text):
        return "blacklisted_word"
    if text[0] in string.punctuation:
        return "starts_with_punctuation"
    if not text[0].isascii():
        return "starts_with_non_ascii"
    return None


def asks_for_writing(instruction: str) -> bool:
    """True for an instruction that opens with a verb asking for a text (`WRITING_VERBS`): never a
    classification task, so the model is not asked. Asked, qwen2.5-coder-0.5b called 20 of the 26 such
    instructions of `tests/data/classify_labelled.jsonl` classification (the 1.5B 16), and a wrong Yes
    makes a label the answer to an essay task."""
    first = re.match(r"(?:please\s+)?([a-z]+)", instruction.lower())
    return bool(first) and first.group(1) in WRITING_VERBS


_NAMES_LABELS = re.compile(
    r"^(?:is|are|does|do|can|was|were)\b|\b\w+ or \w+\b|\b(?:classify|classification|categori[sz]e|category|whether|"
    r"which (?:of|one)|sentiment|tone|sarcas\w*|part of speech|language of|type of|kind of)\b",
    re.IGNORECASE,
)


def names_its_labels(instruction: str) -> bool:
    """True for an instruction that names its options ("positive or negative"), asks a yes/no
    question, or asks for a category (sentiment, type, language). Only these are put to the model:
    qwen2.5-coder-1.5b still called "Identify the grammatical error in the given sentence" and
    "Analyze the structure of a persuasive essay" classification, and their output-first instances
    answered with a phrase of the instruction. A classification task missed here costs little: its
    input-first instances still end in its label."""
    return _NAMES_LABELS.search(instruction) is not None


YES_NO_GRAMMAR = 'root ::= "Yes" | "No"'
"""The classification answer as GBNF: under it a model picks the likelier word and cannot ramble."""


def yes_no_grammar(spec: LLMSpec | None) -> str | None:
    """`YES_NO_GRAMMAR` for the local llama.cpp engine; None for the others (transformers has no grammar,
    and an OpenAI-style server other than llama-server may refuse the field)."""
    if spec is None or spec.backend != "local":
        return None
    from synth.llm.engines import engine_for  # imports torch: only for a local model, which needs it anyway

    return YES_NO_GRAMMAR if engine_for(spec) == "llama.cpp" else None


def parse_yes_no(text: str) -> bool:
    """True when the first yes/no word of the answer is yes."""
    match = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    return bool(match) and match.group(1).lower() == "yes"


_EXAMPLE_HEADING = re.compile(r"^\s*#*\s*\**\s*(?:example|instance)\s*\d*\s*\**\s*:?\s*\**\s*$", re.I | re.M)
"""An "Example 2:" line between instances: not part of the text around it."""
_NO_INPUT = {"", "none", "(none)", "<none>", "n/a", "na", "no input", "<noinput>", "-"}
_FIELD = r"\s*:\s*(.*?)\s*"
_INPUT_FIRST = re.compile(r"(?:\binput" + _FIELD + r")?\boutput" + _FIELD + r"(?=\binput\s*:|\Z)", re.I | re.S)
_OUTPUT_FIRST = re.compile(
    r"\bclass label" + _FIELD + r"(?:\binput" + _FIELD + r")?(?=\bclass label\s*:|\Z)", re.I | re.S
)


def parse_instances(text: str, classification: bool) -> list[tuple[str, str]]:
    """(input, output) pairs from an instance completion; stops where the model starts a new task."""
    text = re.split(r"^\s*task\s*:", text, maxsplit=1, flags=re.I | re.M)[0]
    text = _EXAMPLE_HEADING.sub("", text)
    if classification:
        # the label is one line; an "Output:" the model adds after the input repeats the label
        pairs = [(_before_output(m.group(2) or ""), m.group(1).split("\n")[0]) for m in _OUTPUT_FIRST.finditer(text)]
    else:
        pairs = [(m.group(1) or "", m.group(2)) for m in _INPUT_FIRST.finditer(text)]
    return [(_no_input(inp), out.strip()) for inp, out in pairs]


def _before_output(text: str) -> str:
    return re.split(r"\boutput\s*:", text, maxsplit=1, flags=re.I)[0]


def _no_input(text: str) -> str:
    text = text.strip()
    return "" if text.lower().strip(".") in _NO_INPUT else text


def instance_drop_reason(input: str, output: str, max_words: int = 300) -> str | None:
    """The paper's filters of one instance; None keeps it."""
    if not output.strip():
        return "empty_output"
    if " ".join(output.lower().split()) == " ".join(input.lower().split()):
        return "output_same_as_input"
    if input.rstrip().endswith(":") or output.rstrip().endswith(":"):
        return "ends_with_colon"
    if len(input.split()) + len(output.split()) > max_words:
        return "instance_too_long"
    return None


def conflicting_inputs(pairs: list[tuple[str, str]]) -> set[str]:
    """Non-empty inputs that got different outputs: no output of theirs can be trusted."""
    outputs: dict[str, set[str]] = {}
    for inp, out in pairs:
        if inp:
            outputs.setdefault(_norm(inp), set()).add(_norm(out))
    return {inp for inp, outs in outputs.items() if len(outs) > 1}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- the bootstrap loop


class Bootstrapper:
    """The Self-Instruct loop over one LLM client; `run()` returns kept and dropped rows."""

    def __init__(self, config: SelfInstructConfig, ctx: StageContext, llm: LLMClient, seeds: list[SeedTask],
                 held_out: list[SeedTask] = ()):  # fmt: skip
        self.config, self.ctx, self.llm, self.seeds = config, ctx, llm, seeds
        self.rng = random.Random(ctx.stage_seed)
        self.classify_shots = self._classify_shots(random.Random(derive_seed(ctx.stage_seed, "classify_shots")))
        self.classify_grammar = yes_no_grammar(ctx.llm_specs.get(config.llm))
        # Held-out tasks are never shown, but a new instruction close to one is dropped like one close
        # to a shown seed: otherwise a near copy of a held-out task would leak into the training data.
        self.pool = RougeLPool(s.instruction for s in [*seeds, *held_out])
        self.machine: list[str] = []
        self.rows: list[dict] = []
        self.records = 0
        self.drops: Counter[str] = Counter()
        self.row = partial(
            make_record, generator="self_instruct", run_id=ctx.run_id, seed=ctx.seed, model=llm.model_id
        )

    def run(self) -> list[dict]:
        target = self.config.num_instructions
        for round_ in range(1, self.config.max_rounds + 1):
            kept = self._new_instructions(round_)
            self._new_instances(kept, self._classify(kept, round_), round_)
            self._report(round_)
            if len(self.machine) >= target:
                break
        else:
            log.warning("self_instruct: stopped after %d rounds with %d of %d instructions",
                        self.config.max_rounds, len(self.machine), target)  # fmt: skip
        return self.rows

    def _report(self, round_: int) -> None:
        log.info("self_instruct round %d: %d/%d instructions kept, %d records, drops %s", round_,
                 len(self.machine), self.config.num_instructions, self.records, dict(self.drops))  # fmt: skip
        self.ctx.count(**{f"drop_{reason}": n for reason, n in self.drops.items()})
        self.drops.clear()

    def _drop(self, reason: str, **fields) -> None:
        self.drops[reason] += 1
        self.rows.append(self.row(drop_reason=reason, **fields))

    # -- steps 1 and 2: generate and filter instructions

    def _new_instructions(self, round_: int) -> list[str]:
        cfg = self.config
        requests = self.task_requests(cfg.prompts_per_round)
        stop = _stops_after(requests[0][1])  # the same numbering in every prompt of a round
        sampling = cfg.task_sampling.params(self._seed("tasks", round_), stop=stop)
        completions = self.llm.generate([r for r, _ in requests], sampling)
        kept: list[str] = []
        for completion in completions:
            if completion.finish_reason == "length":  # the paper drops a cut-off response whole
                self._drop("truncated_response", instruction=completion.text.strip()[:500])
                continue
            for text in parse_tasks(completion.text):
                if len(self.machine) >= cfg.num_instructions:
                    return kept
                reason = self._instruction_drop_reason(text)
                if reason:
                    self._drop(reason, instruction=text)
                else:
                    self.pool.add(text)
                    self.machine.append(text)
                    kept.append(text)
        return kept

    def _instruction_drop_reason(self, text: str) -> str | None:
        reason = instruction_drop_reason(text, self.config.min_words, self.config.max_words)
        if reason is None and self.pool.max_score(text) > self.config.rouge_threshold:
            return "rouge_similar"
        return reason

    def task_requests(self, count: int) -> list[tuple[ChatRequest, int]]:
        """A round's `count` requests for new tasks, each with the last task number it asks for.
        They share one worked example, so every prompt of the round opens with the same two turns
        and the engine feeds them once (16 of a prompt's 24 tasks, drawn per prompt before)."""
        example = self._task_example()
        return [self._task_request(example) for _ in range(count)]

    def _task_example(self) -> list[SeedTask]:
        """The seed tasks of a round's worked example (`_task_request` shows the first ones and
        answers with the rest), at most half of the seed tasks."""
        cfg = self.config
        # At most half the seed tasks, so the prompts of the round still show others.
        example = self.rng.sample(self.seeds, min(cfg.tasks_per_prompt + cfg.new_tasks_per_prompt, len(self.seeds) // 2))
        return example if len(example) >= 2 else []

    def _task_request(self, example: list[SeedTask]) -> tuple[ChatRequest, int]:
        """The request for new tasks, and the last task number it asks for.

        The round's worked example comes first: the question, then the numbered continuation as the
        model's own earlier reply. A small chat model shown only the question rambled, restarted
        the numbering or answered a shown task in 12 of 16 lists. The tasks shown are other seed
        tasks (and machine tasks from the pool)."""
        cfg = self.config
        machine = self.rng.sample(self.machine, min(cfg.machine_per_prompt, len(self.machine)))
        others = [s for s in self.seeds if s not in example]
        shown = self.rng.sample(others, min(cfg.tasks_per_prompt - len(machine), len(others)))
        tasks = [s.instruction for s in shown] + machine
        self.rng.shuffle(tasks)
        new = cfg.new_tasks_per_prompt
        shots = []
        if example:
            cut = len(example) - min(new, len(example) // 2)
            shown_in_example, answer = [s.instruction for s in example[:cut]], [s.instruction for s in example[cut:]]
            shots = [(_task_values(shown_in_example, len(answer)), _numbered(answer, len(shown_in_example) + 1))]
        return few_shot_request("self_instruct_tasks", shots, _task_values(tasks, new)), len(tasks) + new

    # -- step 3: classification identification

    def _classify(self, instructions: list[str], round_: int) -> list[bool]:
        """No for an instruction that asks for a text to be written or names no labels; the model's
        Yes or No for the rest."""
        ask = [not asks_for_writing(t) and names_its_labels(t) for t in instructions]
        asked = [t for t, a in zip(instructions, ask) if a]
        if not asked:
            return [False] * len(instructions)
        requests = [few_shot_request("self_instruct_classify", self.classify_shots, {"instruction": t}) for t in asked]
        sampling = JUDGE.params(self._seed("classify", round_)).model_copy(update={"grammar": self.classify_grammar})
        verdicts = iter(parse_yes_no(c.text) for c in self.llm.generate(requests, sampling))
        return [next(verdicts) if a else False for a in ask]

    def _classify_shots(self, rng: random.Random) -> list[tuple[dict[str, str], str]]:
        """A balanced set of seed tasks, half marked classification (Yes) and half not (No), in a
        shuffled order, so the examples lean the answer neither way."""
        yes = [s for s in self.seeds if s.is_classification]
        no = [s for s in self.seeds if not s.is_classification]
        half = min(self.config.classify_examples // 2, len(yes), len(no))
        if half == 0:
            log.warning("self_instruct: the seed tasks need some marked is_classification true and some "
                        "false for balanced examples; classifying without examples")  # fmt: skip
        shots = rng.sample(yes, half) + rng.sample(no, half)
        rng.shuffle(shots)
        return [({"instruction": s.instruction}, "Yes" if s.is_classification else "No") for s in shots]

    # -- steps 4 and 5: generate and filter instances

    def _new_instances(self, instructions: list[str], classification: list[bool], round_: int) -> None:
        if not instructions:
            return
        requests = [self._instance_request(t, c) for t, c in zip(instructions, classification)]
        sampling = self.config.instance_sampling.params(self._seed("instances", round_))
        for text, is_cls, completion in zip(instructions, classification, self.llm.generate(requests, sampling)):
            self._keep_instances(text, is_cls, completion)

    def _instance_request(self, instruction: str, classification: bool) -> ChatRequest:
        """Worked examples with several instances (distinct labels, for classification): the built-in
        ones of the same kind, then seed tasks of that kind that have them."""
        same_kind = [s for s in self.seeds if s.is_classification == classification and _several(s, classification)]
        examples = [s for s in instance_examples() if s.is_classification == classification]
        examples += self.rng.sample(same_kind, min(self.config.instance_examples, len(same_kind)))
        values = {"n": str(self.config.instances_per_prompt)}
        shots = [({"instruction": s.instruction, **values}, format_instances(s.instances, classification)) for s in examples]
        template = "self_instruct_output_first" if classification else "self_instruct_input_first"
        return few_shot_request(template, shots, {"instruction": instruction, **values})

    def _keep_instances(self, instruction: str, classification: bool, completion: Completion) -> None:
        pairs = parse_instances(completion.text, classification)
        if not pairs:
            self._drop("unparsable_instance", instruction=instruction, output=completion.text.strip()[:500])
        if pairs and completion.finish_reason == "length":  # the last one was cut short
            inp, out = pairs.pop()
            self._drop("truncated_instance", instruction=instruction, input=inp, output=out)
        conflicts = conflicting_inputs(pairs)
        seen: set[tuple[str, str]] = set()
        kept, answered_without_input = 0, False
        for inp, out in pairs:
            reason = instance_drop_reason(inp, out, self.config.max_instance_words)
            reason = reason or ("conflicting_outputs" if _norm(inp) in conflicts else None)
            reason = reason or ("duplicate_instance" if (inp, out) in seen else None)
            # a task without input has one answer; more are variants of it (or its list split in parts)
            reason = reason or ("extra_answer_without_input" if not inp and answered_without_input else None)
            reason = reason or ("too_many_instances" if kept >= self.config.max_instances_per_task else None)
            seen.add((inp, out))
            answered_without_input |= not inp and not reason
            fields = dict(instruction=instruction, input=inp, output=out, is_classification=classification)
            if reason:
                self._drop(reason, **fields)
            else:
                self.rows.append(self.row(**fields))
                self.records += 1
                kept += 1

    def _seed(self, step: str, round_: int) -> int:
        return derive_seed(self.ctx.stage_seed, step, round_)


def format_instances(instances: tuple[tuple[str, str], ...], classification: bool) -> str:
    """Instances as the model is shown them and asked to write them (what `parse_instances` reads)."""
    if classification:
        return "\n\n".join(f"Class label: {out}\nInput: {inp or 'none'}" for inp, out in instances)
    return "\n\n".join(f"Input: {inp or 'none'}\nOutput: {out}" for inp, out in instances)


@functools.cache
def instance_examples() -> tuple[SeedTask, ...]:
    """The built-in worked examples of instance generation, in the seed file format."""
    path = TEMPLATE_DIR / "self_instruct_instance_examples.jsonl"
    return tuple(load_seed_tasks(path))


def _several(seed: SeedTask, classification: bool) -> bool:
    """A seed worth showing as an example: two or more instances (two or more labels)."""
    return len({out for _, out in seed.instances} if classification else seed.instances) >= 2


def _numbered(tasks: list[str], first: int) -> str:
    return "\n".join(f"{i}. {task}" for i, task in enumerate(tasks, first))


def _task_values(tasks: list[str], new: int) -> dict[str, str]:
    """The task template's values: the tasks shown, and how many more to write."""
    first = len(tasks) + 1
    return {"count": str(len(tasks)), "tasks": _numbered(tasks, 1), "new": str(new), "next": str(first),
            "last": str(first + new - 1)}  # fmt: skip


def _stops_after(last: int) -> tuple[str, ...]:
    """Where a task list asked to end at `last` has gone past it (the paper's stop sequences)."""
    return (f"\n{last + 1}.", f"\n{last + 1})", f"\n{last + 1} .")


# ---------------------------------------------------------------- the stage


def bootstrap_table(config: SelfInstructConfig, ctx: StageContext, seeds: list[SeedTask],
                    held_out: list[SeedTask] = ()) -> pa.Table:  # fmt: skip
    """The whole bootstrap as one table."""
    llm = ctx.llm(config.llm)
    try:
        return to_table(Bootstrapper(config, ctx, llm, seeds, held_out).run())
    finally:
        llm.close()


@register
class SelfInstruct(TableStage):
    kind = "self_instruct"
    Config = SelfInstructConfig
    description = "Self-Instruct: bootstrap instructions and instances from human-written seed tasks"
    source = True

    def check_inputs(self) -> None:
        super().check_inputs()
        seeds = load_seed_tasks(self.config.seed_tasks)  # a bad seed line fails before Ray starts
        if len(seeds) - self.config.hold_out < 2:
            raise SpecError(f"stage {self.ctx.stage_name!r}: hold_out {self.config.hold_out} leaves fewer than 2 "
                            f"of the {len(seeds)} seed tasks in {self.config.seed_tasks} to generate from")

    def transform(self, table: None) -> pa.Table:
        """The bootstrap is sequential (each round samples the pool so far) and holds the model: one task."""
        seeds, held_out = split_held_out(load_seed_tasks(self.config.seed_tasks), self.config.hold_out,
                                         self.ctx.stage_seed)  # fmt: skip
        if held_out:
            self._write_held_out(held_out)
        return bootstrap_table(self.config, self.ctx, seeds, held_out)

    def _write_held_out(self, tasks: list[SeedTask]) -> None:
        """The held-out tasks' instances as JSONL instruct rows, where `synth train` can read them."""
        target = self.ctx.output_dir / "_reports" / self.ctx.stage_name / "held_out_tasks.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in held_out_rows(tasks)))
        tmp.replace(target)
        log.info("self_instruct: %d seed tasks held out of generation (%s)", len(tasks), target)
