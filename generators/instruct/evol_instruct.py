"""Evol-Instruct (Xu et al., WizardLM): rewrite instructions into harder or rarer ones, round by round.

Each round, for every record of the batch (all steps batched into one `generate` call each):

1. Pick an operation with an RNG seeded by the stage seed, the record id and the round: one of
   five in-depth rewrites (add constraints, deepen, concretize, increase reasoning steps,
   complicate the input) or the in-breadth mutation (a new prompt on a rarer topic). The
   templates are text files under `templates/evol_<operation>.txt`.
2. Evolve: the LLM rewrites the prompt (the instruction with its input, if any).
3. Respond: the LLM answers the evolved prompt; that answer is the new record's output.
4. Eliminate failed evolutions by the paper's four rules:
   - `no_information_gain`: the LLM judges the evolved prompt "Equal" to the original;
   - `model_refused`: the response says "sorry" and is short (< `refusal_max_words` words);
   - `stopwords_only`: the response is only punctuation and stop words;
   - `copied_template`: the evolved prompt copies the template's words ("given prompt", ...).
   Rules (4) and (1) run before the response is generated, so no tokens go to a dead evolution.
   An empty rewrite is eliminated as `empty_evolution`.

A failed evolution's parent goes back to the pool: it is the one evolved again next round.
Output: the incoming records (with `keep_original`), every successful evolution
(`generator="evol_instruct"`, `parent_id`, `evol_round`, `evol_operation`), and every eliminated
one as a row whose `_drop_reason` names the rule. Rows already dropped upstream pass through.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from functools import partial
from typing import Literal

import pyarrow as pa
from pydantic import Field

from generators.instruct.prompts import JUDGE, Sampling, render, user_request
from generators.instruct.records import is_kept, make_record, to_table
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import MapStage, derive_seed

Operation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"]
OPERATIONS: tuple[Operation, ...] = Operation.__args__

TEMPLATE_PHRASES = (
    "given prompt", "rewritten prompt", "created prompt", "rewrite prompt", "prompt#", "#given", "#rewritten",
    "#created", "#the given",
)  # fmt: skip
"""Words of the evolving templates (and their "#...#" markup); an evolved prompt containing one copied
the template (rule 4). Case-insensitive."""

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


class EvolInstructConfig(StageConfig):
    kind: Literal["evol_instruct"] = "evol_instruct"
    llm: str = Field("default", description="Name of a backend in the spec's `llm:` section")
    rounds: int = Field(2, ge=1, le=10, description="Evolution rounds; each evolves the last round's survivors")
    operations: tuple[Operation, ...] = Field(OPERATIONS, min_length=1, description="Operations to pick from")
    keep_original: bool = Field(True, description="Also output the incoming records")
    refusal_max_words: int = Field(80, ge=1, description="A 'sorry' response shorter than this is a refusal")
    evolve_sampling: Sampling = Sampling(max_tokens=96, temperature=0.7)
    response_sampling: Sampling = Sampling(max_tokens=256, temperature=0.7)


# ---------------------------------------------------------------- the elimination rules


def clean_evolution(text: str) -> str:
    """The evolved prompt: without the answer marker the template ended with, or wrapping quotes."""
    text = _ANSWER_MARKER.sub("", text.strip(), count=1).strip()
    return text.strip('"').strip()


def copies_template(evolved: str) -> bool:
    lowered = evolved.lower()
    return any(phrase in lowered for phrase in TEMPLATE_PHRASES)


def parse_equal(text: str) -> bool:
    """True when the judge said Equal (and not "Not Equal")."""
    lowered = text.lower()
    return "equal" in lowered and not re.search(r"\b(?:not|un)\s*equal", lowered)


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


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


# ---------------------------------------------------------------- the stage


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
        evolved = self._evolve(pool, ops, round_)
        reasons = self._prompt_eliminations(pool, evolved, round_)
        responses = self._respond(evolved, reasons, round_)
        next_pool, drops = [], Counter()
        for parent, op, text, reason, response in zip(pool, ops, evolved, reasons, responses):
            reason = reason or response_elimination(response, self.config.refusal_max_words)
            row = self._row(parent, op, text, response, round_, reason)
            out.append(row)
            next_pool.append(parent if reason else row)
            drops[f"drop_{reason}" if reason else "evolved"] += 1
        self.ctx.count(**drops)
        return next_pool

    def _operation(self, record: dict, round_: int) -> Operation:
        return random.Random(derive_seed(self.ctx.stage_seed, record["id"], round_)).choice(self.config.operations)

    def _evolve(self, pool: list[dict], ops: list[Operation], round_: int) -> list[str]:
        requests = [user_request(render(f"evol_{op}", instruction=prompt_of(r))) for r, op in zip(pool, ops)]
        completions = self.llm.generate(requests, self.config.evolve_sampling.params(self._seed("evolve", round_)))
        return [clean_evolution(c.text) for c in completions]

    def _prompt_eliminations(self, pool: list[dict], evolved: list[str], round_: int) -> list[str | None]:
        """Rule (4), then rule (1): an identical text without asking, the LLM judge for the rest."""
        reasons: list[str | None] = []
        for record, text in zip(pool, evolved):
            if not text:
                reasons.append("empty_evolution")
            elif copies_template(text):
                reasons.append("copied_template")
            else:
                reasons.append("no_information_gain" if _same_text(text, prompt_of(record)) else None)
        ask = [i for i, reason in enumerate(reasons) if reason is None]
        requests = [user_request(render("evol_equal", first=prompt_of(pool[i]), second=evolved[i])) for i in ask]
        verdicts = self.llm.generate(requests, JUDGE.params(self._seed("equal", round_))) if ask else []
        for i, verdict in zip(ask, verdicts):
            reasons[i] = "no_information_gain" if parse_equal(verdict.text) else None
        return reasons

    def _respond(self, evolved: list[str], reasons: list[str | None], round_: int) -> list[str]:
        """Responses to the evolved prompts still alive; "" for the eliminated ones."""
        ask = [i for i, reason in enumerate(reasons) if reason is None]
        sampling = self.config.response_sampling.params(self._seed("respond", round_))
        completions = self.llm.generate([user_request(evolved[i]) for i in ask], sampling) if ask else []
        responses = [""] * len(evolved)
        for i, completion in zip(ask, completions):
            responses[i] = completion.text.strip()
        return responses

    def _row(self, parent: dict, op: str, text: str, response: str, round_: int, reason: str | None) -> dict:
        make = partial(make_record, generator="evol_instruct", run_id=self.ctx.run_id, seed=self.ctx.seed)
        return make(model=self.llm.model_id, instruction=text, output=response, parent_id=parent["id"],
                    evol_round=round_, evol_operation=op, drop_reason=reason)  # fmt: skip

    def _seed(self, step: str, round_: int) -> int:
        return derive_seed(self.ctx.stage_seed, step, round_)
