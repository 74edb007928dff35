"""Evol-Instruct (Xu et al., WizardLM): rewrite instructions into harder or rarer ones, round by round.

Each round, for every record of the batch (all steps batched into one `generate` call each):

1. Pick an operation with an RNG seeded by the stage seed, the record id and the round: one of
   five in-depth rewrites (add constraints, deepen, concretize, increase reasoning steps,
   complicate the input: add a table, a JSON object or a code snippet, picked by the same RNG)
   or the in-breadth mutation (a new prompt on a rarer topic). The templates are text files
   under `templates/evol_<operation>.txt`; the in-depth ones ask for 10 to 20 added words.
2. Evolve: the LLM rewrites the prompt (the instruction with its input, if any).
3. Respond: the LLM answers the evolved prompt; that answer is the new record's output.
4. Eliminate failed evolutions by the paper's four rules:
   - `no_information_gain` (rule 1): an in-depth rewrite that adds fewer than
     `min_new_words` content words the original lacks (a paraphrase, a copy), else the LLM
     judge answers "Equal" when shown both prompts. The judge's answer is one of two fixed
     words after worked examples (`templates/evol_equal_examples.jsonl`), read from its first
     word, which a small model can follow; `equality_agreement` measures it on labelled pairs;
   - `model_refused`: the response says "sorry" and is short (< `refusal_max_words` words);
   - `stopwords_only`: the response is only punctuation and stop words;
   - `copied_template` (rule 4): the evolved prompt copies or talks about the template ("given
     prompt", "The new prompt asks...", "Here is the rewritten version").
   Rules (4) and (1) run before the response is generated, so no tokens go to a dead evolution.
   An empty rewrite is eliminated as `empty_evolution`, one cut off by `max_tokens` as
   `truncated_evolution` (a response cut off as `truncated_response`), and a complicate_input rewrite with no table, JSON or code in it as
   `no_added_input`.

A failed evolution's parent goes back to the pool: it is the one evolved again next round.
Output: the incoming records (with `keep_original`), every successful evolution
(`generator="evol_instruct"`, `parent_id`, `evol_round`, `evol_operation`), and every eliminated
one as a row whose `_drop_reason` names the rule. Rows already dropped upstream pass through.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from functools import cache, partial
from typing import Literal

import pyarrow as pa
from pydantic import Field

from generators.instruct.prompts import JUDGE, TEMPLATE_DIR, Sampling, few_shot_request, user_request
from generators.instruct.records import is_kept, make_record, to_table
from synth.llm import ChatRequest, LLMClient
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import MapStage, derive_seed

Operation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"]
OPERATIONS: tuple[Operation, ...] = Operation.__args__

INPUT_KINDS = {
    "table": "a small Markdown table (a header row and 3 to 5 rows of data)",
    "json": "a small JSON object or array with realistic values",
    "code": "a short code snippet (5 to 10 lines) in a code block",
}
"""What complicate_input adds to a prompt, one picked per record."""

_TEMPLATE_LEAK = re.compile(
    r"\b(?:given|rewritten|rewrite|created|evolved|revised|modified)\s+(?:prompt|instruction|version)s?\b"
    r"|\b(?:new|original|above|previous|updated|this)\s+prompts?\b"
    r"|prompt\s*#|#\s*(?:the\s+)?(?:given|rewritten|created)\b"
    r"|^\W*(?:sure|certainly|okay|of course)\b"
    r"|^\s*here(?:'s| is| are)\s+(?:the|a|an|your|my)\s+(?:new|rewritten|revised|updated|modified|created|more)\b",
    re.IGNORECASE,
)
"""An evolved prompt that copies the template's words ("#Given Prompt#") or talks about itself as a
rewrite ("The new prompt asks...", "Here is the rewritten version:") instead of being one (rule 4)."""

STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    let me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which while
    who whom why will with would you your yours yourself yourselves ok okay yes""".split()
)
"""English function words (rule 3): a response made only of these says nothing."""

_ANSWER_MARKER = re.compile(r"^\s*#*\s*(?:the\s+)?(?:rewrit|creat)\w*\s+prompt\s*#*\s*:\s*", re.IGNORECASE)


_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
_CODE = re.compile(r"```|^\s*(?:def |class |function |import |for .*:|return |#include|SELECT |public )|;\s*$",
                   re.MULTILINE)  # fmt: skip


class EvolInstructConfig(StageConfig):
    kind: Literal["evol_instruct"] = "evol_instruct"
    llm: str = Field("default", description="Name of a backend in the spec's `llm:` section")
    rounds: int = Field(2, ge=1, le=10, description="Evolution rounds; each evolves the last round's survivors")
    operations: tuple[Operation, ...] = Field(OPERATIONS, min_length=1, description="Operations to pick from")
    keep_original: bool = Field(True, description="Also output the incoming records")
    refusal_max_words: int = Field(80, ge=1, description="A 'sorry' response shorter than this is a refusal")
    min_new_words: int = Field(3, ge=0, description="Rule 1: an in-depth rewrite must add this many new content words")
    judge_equality: bool = Field(True, description="Rule 1: also ask the LLM whether the prompts are equal")
    evolve_sampling: Sampling = Sampling(max_tokens=192, temperature=0.7)
    response_sampling: Sampling = Sampling(max_tokens=256, temperature=0.7)


# ---------------------------------------------------------------- the elimination rules


def clean_evolution(text: str) -> str:
    """The evolved prompt: without the answer marker the template ended with, or wrapping quotes."""
    text = _ANSWER_MARKER.sub("", text.strip(), count=1).strip()
    return text.strip('"').strip()


def copies_template(evolved: str) -> bool:
    """Rule 4: the template's words, or talk about the rewrite, in the evolved prompt."""
    return bool(_TEMPLATE_LEAK.search(evolved))


def parse_equal(text: str) -> bool:
    """True when the judge's first word is Equal; "Not equal", "Unequal" or anything else is False."""
    first = re.match(r"[\W_]*(\w+)", text)
    return bool(first) and first.group(1).lower() == "equal"


def content_words(text: str) -> set[str]:
    """Lower-case words that are not stop words, a plural "s" dropped: what a prompt is about."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words if w not in STOP_WORDS}


def new_content_words(original: str, evolved: str) -> int:
    """How many content words the evolved prompt has that the original lacks."""
    return len(content_words(evolved) - content_words(original))


def has_structured_input(text: str) -> bool:
    """A Markdown table, a JSON object or array, or code in the text."""
    if len(_TABLE_ROW.findall(text)) >= 2 or _CODE.search(text):
        return True
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = json.JSONDecoder().raw_decode(text[match.start() :])
        except ValueError:
            continue
        if isinstance(value, (dict, list)) and len(value) >= 2:
            return True
    return False


@cache
def equality_examples() -> tuple[tuple[dict[str, str], str], ...]:
    """The judge's worked examples: labelled pairs shown as earlier turns, half of each answer."""
    lines = (TEMPLATE_DIR / "evol_equal_examples.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    return tuple(({"first": p["first"], "second": p["second"]}, "Equal" if p["equal"] else "Not equal") for p in pairs)


def equality_requests(pairs: list[tuple[str, str]]) -> list:
    """Rule 1's judge requests, one per (original, evolved) pair."""
    shots = list(equality_examples())
    return [few_shot_request("evol_equal", shots, {"first": a, "second": b}) for a, b in pairs]


def equality_agreement(llm: LLMClient, labelled: list[tuple[str, str, bool]], seed: int = 0) -> float:
    """Share of labelled (first, second, equal) pairs on which the LLM judge agrees with the label."""
    verdicts = llm.generate(equality_requests([(a, b) for a, b, _ in labelled]), JUDGE.params(seed))
    return sum(parse_equal(v.text) == equal for v, (_, _, equal) in zip(verdicts, labelled)) / len(labelled)


def is_refusal(response: str, max_words: int = 80) -> bool:
    return "sorry" in response.lower() and len(response.split()) < max_words


def is_stopwords_only(response: str) -> bool:
    return all(word in STOP_WORDS for word in re.findall(r"[a-z0-9']+", response.lower()))


def response_elimination(response: str, refusal_max_words: int = 80) -> str | None:
    """Rules (2) and (3), on the response to an evolved prompt."""
    if is_stopwords_only(response):
        return "stopwords_only"
    if is_refusal(response, refusal_max_words):
        return "model_refused"
    return None


def prompt_of(record: dict) -> str:
    """What gets evolved: the instruction, with its input when it has one."""
    return f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]


# ---------------------------------------------------------------- the stage



def evolve_request(record: dict, op: Operation, rng: random.Random) -> ChatRequest:
    """The evolution request for one record, after one worked example of the same operation
    (`templates/evol_examples.jsonl`) as the model's earlier reply: shown only the template, the
    embedded model copied its wording back in 93 of 220 evolutions. complicate_input draws from
    rng the kind of data to add, and its example adds that kind."""
    values = {}
    key = op
    if op == "complicate_input":
        kind = rng.choice(sorted(INPUT_KINDS))
        values, key = {"data": INPUT_KINDS[kind]}, f"{op}:{kind}"
    example = evolution_examples()[key]
    shot = ({"instruction": example["instruction"], **values}, example["rewritten"])
    return few_shot_request(f"evol_{op}", [shot], {"instruction": prompt_of(record), **values})


@cache
def evolution_examples() -> dict[str, dict]:
    """The worked example of each operation (complicate_input: of each kind of data), by key."""
    lines = (TEMPLATE_DIR / "evol_examples.jsonl").read_text().splitlines()
    examples = [json.loads(line) for line in lines if line.strip()]
    return {":".join(filter(None, (e["operation"], e.get("kind")))): e for e in examples}


@register
class EvolInstruct(MapStage):
    kind = "evol_instruct"
    Config = EvolInstructConfig
    description = "Evol-Instruct: evolve instructions in depth and breadth, eliminating failed evolutions"
    stateful = True

    def setup(self) -> None:
        self.llm = self.ctx.llm(self.config.llm)

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pool = [row for row in rows if is_kept(row)]
        passed = [i for i, row in enumerate(rows) if self.config.keep_original or not is_kept(row)]
        new_rows: list[dict] = []
        for round_ in range(1, self.config.rounds + 1):
            pool = self._evolve_round(pool, round_, new_rows)
        evolved = to_table(new_rows)
        originals = batch.take(pa.array(passed, pa.int64()))
        return pa.concat_tables([originals, evolved], promote_options="permissive")

    def _evolve_round(self, pool: list[dict], round_: int, out: list[dict]) -> list[dict]:
        """Evolve every record of `pool` once; return the next pool (survivors, or their parents)."""
        if not pool:
            return pool
        ops = [self._operation(record, round_) for record in pool]
        evolved, cut = self._evolve(pool, ops, round_)
        reasons = self._prompt_eliminations(pool, ops, evolved, cut, round_)
        responses, responses_cut = self._respond(evolved, reasons, round_)
        next_pool, drops = [], Counter()
        for parent, op, text, reason, response, cut_off in zip(pool, ops, evolved, reasons, responses, responses_cut):
            reason = reason or ("truncated_response" if cut_off else None)
            reason = reason or response_elimination(response, self.config.refusal_max_words)
            row = self._row(parent, op, text, response, round_, reason)
            out.append(row)
            next_pool.append(parent if reason else row)
            drops[f"drop_{reason}" if reason else "evolved"] += 1
        self.ctx.count(**drops)
        return next_pool

    def _rng(self, record: dict, round_: int) -> random.Random:
        return random.Random(derive_seed(self.ctx.stage_seed, record["id"], round_))

    def _operation(self, record: dict, round_: int) -> Operation:
        return self._rng(record, round_).choice(self.config.operations)

    def _evolve(self, pool: list[dict], ops: list[Operation], round_: int) -> tuple[list[str], list[bool]]:
        """The evolved prompts, and whether each was cut off by `max_tokens`."""
        requests = [self._evolve_request(r, op, round_) for r, op in zip(pool, ops)]
        completions = self.llm.generate(requests, self.config.evolve_sampling.params(self._seed("evolve", round_)))
        return [clean_evolution(c.text) for c in completions], [c.finish_reason == "length" for c in completions]

    def _evolve_request(self, record: dict, op: Operation, round_: int) -> ChatRequest:
        return evolve_request(record, op, self._rng(record, round_))  # a second draw of the same RNG

    def _prompt_eliminations(self, pool: list[dict], ops: list[Operation], evolved: list[str], cut: list[bool],
                             round_: int) -> list[str | None]:  # fmt: skip
        """Rule (4), then rule (1): too few new words without asking, the LLM judge for the rest."""
        reasons = [self._prompt_elimination(*args) for args in zip(pool, ops, evolved, cut)]
        ask = [i for i, reason in enumerate(reasons) if reason is None] if self.config.judge_equality else []
        requests = equality_requests([(prompt_of(pool[i]), evolved[i]) for i in ask])
        verdicts = self.llm.generate(requests, JUDGE.params(self._seed("equal", round_))) if ask else []
        for i, verdict in zip(ask, verdicts):
            reasons[i] = "no_information_gain" if parse_equal(verdict.text) else None
        return reasons

    def _prompt_elimination(self, record: dict, op: Operation, text: str, cut: bool) -> str | None:
        if not text:
            return "empty_evolution"
        if cut:
            return "truncated_evolution"
        if copies_template(text):
            return "copied_template"
        needed = 1 if op == "breadth" else self.config.min_new_words  # a new topic may be as long as the old
        if new_content_words(prompt_of(record), text) < needed:
            return "no_information_gain"
        if op == "complicate_input" and not has_structured_input(text):
            return "no_added_input"
        return None

    def _respond(self, evolved: list[str], reasons: list[str | None], round_: int) -> tuple[list[str], list[bool]]:
        """Responses to the evolved prompts still alive ("" for the eliminated ones), and whether each
        was cut off by `max_tokens` (an answer that stops mid-sentence teaches stopping mid-sentence)."""
        ask = [i for i, reason in enumerate(reasons) if reason is None]
        sampling = self.config.response_sampling.params(self._seed("respond", round_))
        completions = self.llm.generate([user_request(evolved[i]) for i in ask], sampling) if ask else []
        responses, cut = [""] * len(evolved), [False] * len(evolved)
        for i, completion in zip(ask, completions):
            responses[i], cut[i] = completion.text.strip(), completion.finish_reason == "length"
        return responses, cut

    def _row(self, parent: dict, op: str, text: str, response: str, round_: int, reason: str | None) -> dict:
        make = partial(make_record, generator="evol_instruct", run_id=self.ctx.run_id, seed=self.ctx.seed)
        return make(model=self.llm.model_id, instruction=text, output=response, parent_id=parent["id"],
                    evol_round=round_, evol_operation=op, drop_reason=reason)  # fmt: skip

    def _seed(self, step: str, round_: int) -> int:
        return derive_seed(self.ctx.stage_seed, step, round_)
