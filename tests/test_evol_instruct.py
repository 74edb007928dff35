"""Evol-Instruct: the elimination rules on strings, the rounds on a scripted LLM, and one batch
evolved by the real local model."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pytest

from generators.instruct.evol_instruct import (
    INPUT_KINDS,
    equality_agreement,
    has_structured_input,
    new_content_words,
    OPERATIONS,
    EvolInstruct,
    EvolInstructConfig,
    clean_evolution,
    copies_template,
    evolve_request,
    parse_equal,
    response_elimination,
)
from generators.instruct.prompts import TEMPLATE_DIR
from generators.instruct.records import STAGE_SCHEMA, make_record, to_table
from synth.llm import Completion, LLMClient
from synth.spec import LLMSpec
from synth.stage import DROP_REASON, StageContext

# ---------------------------------------------------------------- rules on strings


def test_every_operation_has_a_template_with_the_instruction_placeholder():
    for op in OPERATIONS:
        assert "$instruction" in (TEMPLATE_DIR / f"evol_{op}.txt").read_text()


def test_clean_evolution_strips_the_answer_marker_only_at_the_start():
    assert clean_evolution('#Rewritten Prompt#: "List five rare birds."') == "List five rare birds."
    assert clean_evolution("Created prompt: Name a rare bird.") == "Name a rare bird."
    assert clean_evolution("Rewrite Prompt#: Name a rare bird.") == "Name a rare bird."
    assert copies_template(clean_evolution("Rewrite the given prompt so it is longer."))


@pytest.mark.parametrize(
    ("text", "copied"),
    [
        ("In the #Rewritten Prompt# list rare birds", True),
        ("As the GIVEN PROMPT says, do X", True),
        ("Name a bird.\n#Created Prompt#:", True),
        ("Czech #Rewrite Prompt#: word", True),
        ("List birds", False),
        # paraphrased leaks, as a small model writes them
        ("The new prompt asks you to list five rare birds and their habitats.", True),
        ("Here is the rewritten version: List five rare birds.", True),
        ("Sure! List five rare birds and say where each one lives.", True),
        ("In this revised instruction, name five birds.", True),
        ("Unlike the original prompt, this one asks for ten birds.", True),
        # ordinary prompts that happen to use the words
        ("Rewrite the following sentence in the passive voice: The cat chased the mouse.", False),
        ("Write a prompt for an image generator that describes a sunset over the sea.", False),
        ("Explain what is new in version 3.12 of Python.", False),
        ("Give the original title of the novel 'The Name of the Rose'.", False),
        ("Here is a table of monthly sales:\n| month | sales |\n| May | 30 |\nWhich month sold most?", False),
        ("Here's a more demanding version: explain how tides work.", True),
    ],
)
def test_copies_template(text, copied):
    assert copies_template(text) is copied


def test_parse_equal():
    assert parse_equal("Equal") and parse_equal('"Equal".') and parse_equal("equal")
    assert not parse_equal("Not Equal") and not parse_equal("not equal.") and not parse_equal("Unequal")
    assert not parse_equal("I cannot tell") and not parse_equal("They are equal.")  # the first word decides


def labelled_pairs() -> list[tuple[str, str, bool]]:
    """Hand-labelled (original, rewrite, equal) pairs: 12 paraphrases, 12 rewrites that ask for more."""
    lines = (Path(__file__).parent / "data" / "evol_equal_pairs.jsonl").read_text().splitlines()
    return [(p["first"], p["second"], p["equal"]) for p in map(json.loads, lines)]


def test_rule_1_word_gain_agrees_with_the_labels():
    """Rule 1's first test, fewer than 3 new content words, on the hand-labelled pairs: it must never
    eliminate a rewrite that asks for more, and should catch most paraphrases."""
    pairs = labelled_pairs()
    assert len(pairs) == 24 and sum(equal for *_, equal in pairs) == 12
    judged = [(new_content_words(a, b) < 3, equal) for a, b, equal in pairs]
    assert not [1 for said_equal, equal in judged if said_equal and not equal]
    assert sum(said_equal == equal for said_equal, equal in judged) / len(pairs) >= 0.9  # measured: 23/24


@pytest.mark.parametrize(
    ("text", "structured"),
    [
        ("Find the cheapest item:\n| item | price |\n|------|-------|\n| tea | 3 |\n| cake | 5 |", True),
        ('Which user is oldest? {"users": [{"name": "Ana", "age": 31}, {"name": "Bo", "age": 45}]}', True),
        ("What does this print?\n```python\nfor i in range(3):\n    print(i * 2)\n```", True),
        ("Fix the bug:\ndef add(a, b):\n    return a - b", True),
        ("Sort these numbers: [5, 2, 9, 14]", True),
        ("Explain why the sky is blue in the afternoon but red at sunset.", False),
        ("Name a bird {or a fish}.", False),
        ("Choose one: [yes]", False),
    ],
)
def test_structured_input_is_recognised(text, structured):
    assert has_structured_input(text) is structured


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("I'm sorry, I can't help with that.", "model_refused"),
        ("Sorry! " + "word " * 100, None),  # long answers that apologise once are kept
        ("It is what it is.", "stopwords_only"),
        ("...!?", "stopwords_only"),
        ("", "stopwords_only"),
        ("Paris is the capital of France.", None),
    ],
)
def test_response_elimination(response, reason):
    assert response_elimination(response) == reason


# ---------------------------------------------------------------- rounds on a scripted LLM


class ScriptedLLM(LLMClient):
    """Evolves by appending a clause; judges, answers and fails on cue words in the prompt."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fresh = itertools.count()

    @property
    def model_id(self) -> str:
        return "scripted"

    def generate(self, requests, sampling):
        self.calls.append(len(requests))
        return [Completion(self._reply(r[-1]["content"]), 10, 10) for r in requests]

    def _reply(self, prompt: str) -> str:
        if "#Given Prompt#" in prompt:
            given = re.search(r"#Given Prompt#:\s*(.*?)\s*#(?:Rewritten|Created) Prompt#", prompt, re.S).group(1)
            if "COPY" in given:
                return "#Rewritten Prompt#: Rewrite the given prompt."
            if "SHORT" in given:
                return f"#Rewritten Prompt#: {given} Now."  # no new content words: rule 1 without asking
            n = next(self.fresh)  # new words every time, so a second round gains information too
            if "input data to work on" in prompt:
                return f"#Rewritten Prompt#: {given} Use this data:\n| x{n} | y{n} |\n|---|---|\n| 1 | 2 |"
            return f"#Rewritten Prompt#: {given} Explain each step, covering w{n}a, w{n}b and w{n}c."
        if prompt.startswith("Do these two prompts"):
            return "Equal" if "SAME" in prompt else "Not Equal"
        if "REFUSE" in prompt:
            return "Sorry, I cannot do that."
        return "Here is a careful answer with several steps."


def make_ctx(tmp_path: Path, llm_specs: dict | None = None) -> StageContext:
    return StageContext(
        run_name="test", run_id="run-1", seed=3, stage_name="evol_instruct", stage_index=1,
        output_dir=tmp_path, llm_specs=llm_specs or {},
    )  # fmt: skip


def seed_batch(*instructions: str, dropped: str | None = None) -> pa.Table:
    rows = [
        make_record(generator="self_instruct", run_id="run-1", seed=3, model="m", instruction=text,
                    input="some input" if i == 0 else "", output="an answer", is_classification=False)
        for i, text in enumerate(instructions)
    ]  # fmt: skip
    if dropped:
        rows.append(make_record(generator="self_instruct", run_id="run-1", seed=3, model="m",
                                instruction=dropped, drop_reason="rouge_similar"))  # fmt: skip
    return to_table(rows)


def run_stage(tmp_path: Path, batch: pa.Table, **config) -> tuple[pa.Table, ScriptedLLM]:
    stage = EvolInstruct(EvolInstructConfig(**config), make_ctx(tmp_path))
    stage.llm = llm = ScriptedLLM()  # what setup() would build from the spec
    return stage.process(batch), llm


def test_rounds_evolve_survivors_and_return_failures_to_the_pool(tmp_path):
    batch = seed_batch("Write a poem.", "Name a COPY bird.", "Say the SAME thing.", "Please REFUSE this.",
                       "Say it SHORT.", dropped="A rejected instruction")  # fmt: skip
    out, llm = run_stage(tmp_path, batch, rounds=2)
    rows = out.to_pylist()

    assert out.schema.equals(STAGE_SCHEMA)
    originals = [r for r in rows if r["generator"] == "self_instruct"]
    assert len(originals) == 6 and originals[-1][DROP_REASON] == "rouge_similar"  # passed through

    evolved = [r for r in rows if r["generator"] == "evol_instruct"]
    by_reason = {}
    for r in evolved:
        by_reason.setdefault(r[DROP_REASON], []).append(r)
    assert {k: len(v) for k, v in by_reason.items()} == {
        None: 2, "copied_template": 2, "no_information_gain": 4, "model_refused": 2
    }
    first, second = sorted(by_reason[None], key=lambda r: r["evol_round"])
    assert first["instruction"].startswith("Write a poem.\n\nsome input ")  # input folded in
    assert second["parent_id"] == first["id"] and second["evol_round"] == 2  # survivors evolve on
    for failed in by_reason["model_refused"]:  # a failure's parent is evolved again next round
        assert failed["parent_id"] == originals[3]["id"]
    assert all(r["evol_operation"] in OPERATIONS and r["is_classification"] is None for r in evolved)

    # Per round: one evolve call for 5 records; the copy and the SHORT one are eliminated before
    # judging; the SAME one after judging, so 2 get responses.
    assert llm.calls == [5, 3, 2, 5, 3, 2]


def test_complicate_input_asks_for_data_and_eliminates_rewrites_without_it(tmp_path):
    batch = seed_batch(*[f"Task number {i} to do." for i in range(30)])
    out, _ = run_stage(tmp_path, batch, rounds=1, operations=("complicate_input",))
    evolved = [r for r in out.to_pylist() if r["generator"] == "evol_instruct"]
    assert all(r[DROP_REASON] is None and "| 1 | 2 |" in r["instruction"] for r in evolved)

    stage = EvolInstruct(EvolInstructConfig(operations=("complicate_input",)), make_ctx(tmp_path))
    records = batch.to_pylist()
    prompts = {stage._evolve_request(r, "complicate_input", 1)[-1]["content"] for r in records}
    assert {kind for kind, text in INPUT_KINDS.items() if any(text in p for p in prompts)} == set(INPUT_KINDS)
    assert stage._prompt_elimination(records[1], "complicate_input", "Task number 1 to do, in twelve careful "
                                     "numbered steps with reasons.", False) == "no_added_input"  # fmt: skip
    assert stage._prompt_elimination(records[1], "deepen", "Task number 1 to do, in", True) == "truncated_evolution"


class CuttingLLM(ScriptedLLM):
    """Cuts off at `max_tokens` every answer to a prompt that asks for a LONG one."""

    def generate(self, requests, sampling):
        done = super().generate(requests, sampling)
        answering = ["#Given Prompt#" not in r[-1]["content"] and not r[-1]["content"].startswith("Do these two")
                     for r in requests]
        return [Completion(c.text, 10, 10, "length" if a and "LONG" in r[-1]["content"] else "stop")
                for c, a, r in zip(done, answering, requests)]  # fmt: skip


def test_a_response_cut_off_by_max_tokens_is_eliminated(tmp_path):
    stage = EvolInstruct(EvolInstructConfig(rounds=1), make_ctx(tmp_path))
    stage.llm = CuttingLLM()
    out = stage.process(seed_batch("Write a LONG essay on rivers.", "Write a short poem."))
    reasons = {r["instruction"].split(".")[0]: r[DROP_REASON] for r in out.to_pylist() if r["generator"] == "evol_instruct"}
    assert reasons == {"Write a LONG essay on rivers": "truncated_response", "Write a short poem": None}


def test_in_depth_templates_ask_for_10_to_20_more_words():
    for op in ("add_constraints", "deepen", "concretize", "increase_reasoning"):
        assert "Add 10 to 20 words" in (TEMPLATE_DIR / f"evol_{op}.txt").read_text()


def test_keep_original_false_and_empty_batch(tmp_path):
    out, _ = run_stage(tmp_path, seed_batch("Write a poem."), rounds=1, keep_original=False)
    assert out["generator"].to_pylist() == ["evol_instruct"]
    empty, llm = run_stage(tmp_path, to_table([]), rounds=2)
    assert empty.num_rows == 0 and llm.calls == []


def test_accepts_batches_as_the_runner_reads_them_back(tmp_path):
    """Kept rows only, no `_drop_reason` column, every field nullable (as Parquet reads them)."""
    batch = seed_batch("Write a poem.").drop_columns([DROP_REASON])
    batch = batch.cast(pa.schema([field.with_nullable(True) for field in batch.schema]))
    out, _ = run_stage(tmp_path, batch, rounds=1)
    assert out.num_rows == 2 and out[DROP_REASON].to_pylist() == [None, None]


def test_operation_choice_is_seeded_by_record_and_round(tmp_path):
    def operations(table: pa.Table) -> dict[str, str]:
        return {r["parent_id"]: r["evol_operation"] for r in table.to_pylist() if r["parent_id"]}

    batch = seed_batch(*[f"Task number {i} to do." for i in range(12)])
    first = operations(run_stage(tmp_path, batch, rounds=1)[0])
    again = operations(run_stage(tmp_path, batch.slice(6), rounds=1)[0])  # same records, other batch
    assert len(again) == 6 and again == {parent: first[parent] for parent in again}
    assert len(set(first.values())) > 2


# ---------------------------------------------------------------- the real local model


@pytest.mark.slow
def test_evol_instruct_with_local_model(tmp_path):
    config = EvolInstructConfig(rounds=1, evolve_sampling={"max_tokens": 48}, response_sampling={"max_tokens": 48})
    stage = EvolInstruct(config, make_ctx(tmp_path, {"default": LLMSpec(backend="local", batch_size=8)}))
    stage.setup()
    batch = seed_batch("Write a short poem about autumn leaves.", "Explain why the sea is salty.",
                       "List three ways to save water at home.", "Give a name for a friendly robot.")  # fmt: skip
    out = stage.process(batch)

    evolved = out.filter(pa.compute.equal(out["generator"], "evol_instruct")).to_pylist()
    assert len(evolved) == 4
    assert all(r["model"] == "SmolLM2-135M-Instruct.Q4_1" and r["evol_round"] == 1 for r in evolved)
    assert all(r[DROP_REASON] is not None or r["output"] for r in evolved)


@pytest.mark.slow
def test_rule_1_judge_agreement_with_qwen_on_the_labelled_pairs():
    """The LLM half of rule 1 on the hand-labelled pairs, with the smallest named offline model."""
    from gguf_client import GGUFClient

    agreement = equality_agreement(GGUFClient("qwen2.5-coder-0.5b"), labelled_pairs())
    print(f"rule 1 judge agreement, qwen2.5-coder-0.5b: {agreement:.2f}")
    assert agreement >= 0.6  # measured 0.62 (15 of 24) on a loaded 2-core machine: why the word rule comes first


def test_every_evolution_request_opens_with_a_worked_example_of_its_operation():
    record = {"instruction": "Sort the list of names.", "input": "Zoe, Adam, Maya"}
    for op in OPERATIONS:
        for seed in range(6):  # complicate_input draws the kind of data: each kind has its example
            example, reply, question = evolve_request(record, op, random.Random(seed))
            assert [example["role"], reply["role"], question["role"]] == ["user", "assistant", "user"]
            assert question["content"].rstrip().endswith("#:") and "Zoe, Adam, Maya" in question["content"]
            # The reply is a clean evolution by the stage's own rules: it would not be eliminated.
            assert not copies_template(reply["content"]) and reply["content"] not in example["content"]
            if op == "complicate_input":
                assert has_structured_input(reply["content"])
                kind = next(k for k, text in INPUT_KINDS.items() if text in question["content"])
                assert INPUT_KINDS[kind] in example["content"]
