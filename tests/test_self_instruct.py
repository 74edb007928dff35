"""Self-Instruct: parsers and filters on strings, the bootstrap loop on a scripted LLM, and one
end-to-end run of the stage on Ray with the real local model."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from generators.instruct.records import INSTRUCT_SCHEMA, STAGE_SCHEMA
from generators.instruct.self_instruct import (
    Bootstrapper,
    SelfInstruct,
    held_out_rows,
    split_held_out,
    SelfInstructConfig,
    YES_NO_GRAMMAR,
    asks_for_writing,
    names_its_labels,
    conflicting_inputs,
    instance_drop_reason,
    instruction_drop_reason,
    load_seed_tasks,
    parse_instances,
    parse_tasks,
    parse_yes_no,
    yes_no_grammar,
)
from synth.errors import SpecError
from synth.llm import Completion, LLMClient
from synth.spec import LLMSpec
from synth.stage import DROP_REASON, StageContext

SEED_FILE = Path(__file__).parents[1] / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"


# ---------------------------------------------------------------- parsing and filters


def test_parse_tasks_reads_numbered_items_in_any_common_style():
    text = (
        "Sure! Here are more tasks:\n"
        "9. Write a limerick about a lazy cat.\n"
        "10) **Classify** the tone of the letter as formal or informal.\n"
        "Task 11: Explain how a bicycle gear works\n   with a short example.\n"
        "12. List the planets in order from the sun"
    )
    assert parse_tasks(text) == [
        "Write a limerick about a lazy cat.",
        "Classify the tone of the letter as formal or informal.",
        "Explain how a bicycle gear works",
        "List the planets in order from the sun",
    ]
    assert parse_tasks("no numbered list here") == []
    assert parse_tasks("a) Name a bird.\nb) Name a fish.") == ["Name a bird.", "Name a fish."]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Summarize it", "too_short"),
        (" ".join(["word"] * 151), "too_long"),
        ("Draw a cat sitting on a fence", "blacklisted_word"),
        ("Describe the plot of your favourite film", "blacklisted_word"),
        ("Tell me how to go to the airport", "blacklisted_word"),
        ("- Write a story about a dragon", "starts_with_punctuation"),
        ("Écris un poème sur la mer", "starts_with_non_ascii"),
        ("Write a story about a brave dragon", None),
        ("Explain mapping functions in Python", None),  # "mapping" is not the word "map"
    ],
)
def test_instruction_filters(text, reason):
    assert instruction_drop_reason(text) == reason


def labelled_instructions() -> list[tuple[str, bool]]:
    """Hand-labelled instructions written the way models write them (some from the README's measured
    run): (instruction, is a classification task)."""
    lines = (Path(__file__).parent / "data" / "classify_labelled.jsonl").read_text().splitlines()
    return [(row["instruction"], row["is_classification"]) for row in map(json.loads, lines)]


def test_instructions_that_ask_for_a_text_are_never_classification():
    for name, labelled in [("labelled", labelled_instructions()),
                           ("seeds", [(s.instruction, s.is_classification) for s in load_seed_tasks(SEED_FILE)])]:
        vetoed = [(text, classification) for text, classification in labelled if asks_for_writing(text)]
        assert not [text for text, classification in vetoed if classification], name
        not_classification = sum(not classification for _, classification in labelled)
        assert len(vetoed) >= 0.75 * not_classification, name  # measured: 26 of 32, 23 of 27
    assert asks_for_writing("Please write a haiku about rain.") and asks_for_writing("Why is the sky blue?")
    assert not asks_for_writing("Writer's block: is the sentence formal or informal?")


def test_only_instructions_that_name_their_labels_are_put_to_the_model(tmp_path):
    # tasks qwen2.5-coder-1.5b called classification (after the writing-verb rule) whose output-first
    # instances answered with a phrase of the instruction ("grammatical error", "persuasive essay")
    not_labels = ["Identify the grammatical error in the given sentence.", 'Locate the word that has the same root '
                  'as "thrive".', "Analyze the structure of a persuasive essay.", "What is the capital of Peru?"]
    labels = ["Classify the paragraph as a pro or con statement.", "Determine the emotional tone of the sentence.",
              "Is the given statement an example of sarcasm?"]  # fmt: skip
    seeds = load_seed_tasks(SEED_FILE)
    llm = ScriptedLLM()  # says Yes to every classification question
    boot = Bootstrapper(SelfInstructConfig(seed_tasks=SEED_FILE), make_ctx(tmp_path), llm, seeds)
    assert boot._classify(not_labels + labels, round_=0) == [False] * 4 + [True] * 3
    assert len(llm.calls[-1]) == 3  # the model is asked about the three alone
    # no classification task of the labelled set or the seeds is kept from the model (fitted on them)
    for text, classification in labelled_instructions() + [(s.instruction, s.is_classification) for s in seeds]:
        assert names_its_labels(text) or not classification, text


def test_the_yes_no_answer_is_constrained_where_the_engine_takes_a_grammar(tmp_path):
    qwen = LLMSpec(engine="llama.cpp", model="qwen2.5-coder-0.5b")
    assert yes_no_grammar(qwen) == YES_NO_GRAMMAR == 'root ::= "Yes" | "No"'
    assert yes_no_grammar(LLMSpec(engine="transformers")) is None and yes_no_grammar(None) is None
    assert yes_no_grammar(LLMSpec(backend="openai", model="gpt-4o-mini")) is None  # may not be llama-server
    config = SelfInstructConfig(seed_tasks=SEED_FILE)
    boot = Bootstrapper(config, make_ctx(tmp_path, {"default": qwen}), ScriptedLLM(), load_seed_tasks(SEED_FILE))
    assert boot.classify_grammar == YES_NO_GRAMMAR


def test_parse_yes_no():
    assert parse_yes_no("Yes.") and parse_yes_no("Is it classification? yes")
    assert not parse_yes_no("No") and not parse_yes_no("I think so")


def test_parse_instances_input_first():
    text = (
        "Input: 3, 1, 2\nOutput: 1, 2, 3\n\nInput: none\nOutput: Nothing to sort.\n"
        "Task: Another task\nInput: x\nOutput: y"
    )
    assert parse_instances(text, classification=False) == [("3, 1, 2", "1, 2, 3"), ("", "Nothing to sort.")]
    assert parse_instances("Output: A short poem.", classification=False) == [("", "A short poem.")]
    assert parse_instances("I don't know how to do that.", classification=False) == []
    headed = "Example 1:\nInput: 2 + 2\nOutput: 4\n\n**Example 2:**\nInput: 3 * 3\nOutput: 9\nExample 3\n"
    assert parse_instances(headed, classification=False) == [("2 + 2", "4"), ("3 * 3", "9")]


def test_parse_instances_output_first():
    text = "Class label: Positive\nInput: I loved it.\nOutput: Positive\n\nClass label: Negative\nInput: Awful."
    assert parse_instances(text, classification=True) == [("I loved it.", "Positive"), ("Awful.", "Negative")]


def test_instance_filters():
    assert instance_drop_reason("abc", "") == "empty_output"
    assert instance_drop_reason("Hello  World", "hello world") == "output_same_as_input"
    assert instance_drop_reason("", "word " * 301) == "instance_too_long"
    assert instance_drop_reason("", "A fine answer.") is None
    # cut short: the paper drops inputs and outputs that end in a colon
    assert instance_drop_reason("Here is the list of items:", "3") == "ends_with_colon"
    assert instance_drop_reason("Sort 3, 1, 2.", "The sorted list is: ") == "ends_with_colon"
    assert instance_drop_reason("What time is it? 10:30", "Half past ten") is None


def test_same_input_with_different_outputs_conflicts():
    pairs = [("2 + 2", "4"), ("2 +  2", "5"), ("3 + 3", "6"), ("3 + 3", "6"), ("", "A poem"), ("", "Another poem")]
    assert conflicting_inputs(pairs) == {"2 + 2"}  # a repeat is a duplicate, no input is no conflict


# ---------------------------------------------------------------- seed file


def test_shipped_seed_file_is_varied():
    seeds = load_seed_tasks(SEED_FILE)
    assert len(seeds) >= 30
    assert 5 <= sum(s.is_classification for s in seeds) < len(seeds) - 5
    assert sum(bool(s.instances[0][0]) for s in seeds) >= 10  # tasks with an input


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"instruction": "Do a thing", "is_classification": False}), "instances"),
        (json.dumps({"instruction": "x", "instances": [{"input": "a"}], "is_classification": False}), "output"),
    ],
)
def test_malformed_seed_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "seeds.jsonl"
    good = json.dumps({"instruction": "Say hi", "instances": [{"output": "Hi"}], "is_classification": False})
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(SpecError, match=rf"seeds\.jsonl:3: .*{message}"):
        load_seed_tasks(path)


# ---------------------------------------------------------------- the loop, on a scripted LLM


class ScriptedLLM(LLMClient):
    """Answers each prompt kind with text shaped like a helpful model's, and records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.topics = itertools.count()

    @property
    def model_id(self) -> str:
        return "scripted"

    def generate(self, requests, sampling):
        prompts = [r[-1]["content"] for r in requests]
        self.calls.append(prompts)
        return [Completion(self._reply(p), 10, 10) for p in prompts]

    def _reply(self, prompt: str) -> str:
        if prompt.startswith("Here are"):
            n = next(self.topics)
            return (
                f"9. Explain t{n}a t{n}b t{n}c to a curious child.\n"
                f"10. Classify u{n}a u{n}b u{n}c as good or bad.\n"
                f"11. Draw v{n}a for me please.\n"
                f"12. Explain t{n}a t{n}b t{n}c to a curious child."  # a repeat: ROUGE-L drops it
            )
        task = prompt.rsplit("Task:", 1)[-1].strip()
        if "Answer Yes or No" in prompt:
            return "Yes"  # what qwen2.5-coder-0.5b said to most tasks: the step must not ask it about "Explain ..."
        if task.startswith("Classify"):
            return "Class label: good\nInput: a sunny day"
        return "Input: none\nOutput: It is a thing that children like."


class TruncatingLLM(ScriptedLLM):
    """Cuts off every second task list and every instance completion at `max_tokens`."""

    def generate(self, requests, sampling):
        self.sampling = getattr(self, "sampling", []) + [sampling]
        done = super().generate(requests, sampling)
        cut = lambda i, c: c.text.startswith("9.") and i % 2 == 1 or c.text.startswith(("Input", "Class"))  # noqa: E731
        return [Completion(c.text, 10, 10, "length" if cut(i, c) else "stop") for i, c in enumerate(done)]


def make_ctx(tmp_path: Path, llm_specs: dict | None = None) -> StageContext:
    return StageContext(
        run_name="test", run_id="run-1", seed=7, stage_name="self_instruct", stage_index=0,
        output_dir=tmp_path, llm_specs=llm_specs or {},
    )  # fmt: skip


def test_bootstrap_keeps_filters_and_batches(tmp_path):
    config = SelfInstructConfig(seed_tasks=SEED_FILE, num_instructions=6, prompts_per_round=2)
    llm = ScriptedLLM()
    rows = Bootstrapper(config, make_ctx(tmp_path), llm, load_seed_tasks(SEED_FILE)).run()
    table = pa.Table.from_pylist(rows, schema=STAGE_SCHEMA)

    kept = [r for r in rows if r[DROP_REASON] is None]
    assert len({r["instruction"] for r in kept}) == 6
    assert {r[DROP_REASON] for r in rows} >= {None, "blacklisted_word", "rouge_similar"}
    classified = {r["instruction"]: r for r in kept}
    assert all(r["is_classification"] == r["instruction"].startswith("Classify") for r in classified.values())
    assert any(r["output"] == "good" and r["input"] == "a sunny day" for r in kept)  # output-first
    assert all(r["generator"] == "self_instruct" and r["evol_round"] == 0 and r["seed"] == 7 for r in rows)
    assert table.num_rows == len(rows)

    # A round is one call per step: 2 task prompts, the 2 kept instructions that do not ask for a text to
    # classify, then all 4 to give instances. Round 1 shows 8 seeds per prompt; later rounds 6 seeds and 2
    # machine tasks.
    assert [len(c) for c in llm.calls] == [2, 2, 4, 2, 1, 2]
    shown = [line for line in llm.calls[3][0].splitlines() if re.match(r"\d+\. ", line)]
    assert len(shown) == 8
    assert len([line for line in shown if re.search(r"\b[tu]\d+a\b", line)]) == 2


def test_a_cut_off_task_list_is_dropped_whole_and_a_cut_off_instance_list_loses_its_last(tmp_path):
    config = SelfInstructConfig(seed_tasks=SEED_FILE, num_instructions=4, prompts_per_round=2, max_rounds=2)
    llm = TruncatingLLM()
    rows = Bootstrapper(config, make_ctx(tmp_path), llm, load_seed_tasks(SEED_FILE)).run()
    truncated = [r for r in rows if r[DROP_REASON] == "truncated_response"]
    assert truncated and truncated[0]["instruction"].startswith("9. Explain")
    # nothing of a cut-off list is kept: every instruction given instances comes from an uncut reply;
    # the scripted instance replies hold one instance each, so a cut-off one leaves nothing
    given = {r["instruction"] for r in rows if r[DROP_REASON] == "truncated_instance"}
    assert len(given) == 4 and all(re.search(r"\b[tu][02]a\b", k) for k in given)
    assert not [r for r in rows if r[DROP_REASON] is None]
    # the task step samples with the paper's presence penalty and stops after the last number asked for
    assert llm.sampling[0].presence_penalty > 0 and "\n17." in llm.sampling[0].stop


def test_a_task_request_shows_a_worked_example_of_other_seed_tasks(tmp_path):
    seeds = load_seed_tasks(SEED_FILE)
    config = SelfInstructConfig(seed_tasks=SEED_FILE, tasks_per_prompt=8, new_tasks_per_prompt=8)
    bootstrapper = Bootstrapper(config, make_ctx(tmp_path), ScriptedLLM(), seeds)
    round_example = bootstrapper._task_example()
    request, last = bootstrapper._task_request(round_example)
    assert [m["role"] for m in request] == ["user", "assistant", "user"] and last == 16
    example, answer, question = (m["content"] for m in request)
    # The example reply continues its own list in the asked format, with seed tasks not shown in it.
    lines = answer.split("\n")
    assert [line.split(". ", 1)[0] for line in lines] == [str(n) for n in range(9, 17)]
    instructions = {s.instruction for s in seeds}
    answered = {line.split(". ", 1)[1] for line in lines}
    assert answered <= instructions and not any(task in example for task in answered)
    shown = {line.split(". ", 1)[1] for line in question.split("\n") if line[:1].isdigit()}
    assert not answered & shown and len(shown) == 8
    # The example is the round's: every prompt of the round opens with the same two turns.
    again, _ = bootstrapper._task_request(round_example)
    assert again[:2] == request[:2] and again[2] != request[2]


def test_classification_examples_are_balanced_seeds(tmp_path):
    seeds = load_seed_tasks(SEED_FILE)
    marked = {s.instruction: s.is_classification for s in seeds}
    config = SelfInstructConfig(seed_tasks=SEED_FILE, classify_examples=8)
    shots = Bootstrapper(config, make_ctx(tmp_path), ScriptedLLM(), seeds).classify_shots
    answers = [answer for _, answer in shots]
    assert sorted(answers) == ["No"] * 4 + ["Yes"] * 4
    assert all(marked[values["instruction"]] == (answer == "Yes") for values, answer in shots)
    assert answers[-1] in {"Yes", "No"} and answers != ["Yes", "No"] * 4  # shuffled, not a fixed pattern


def test_instance_prompts_ask_for_several_instances_and_every_label(tmp_path):
    seeds = load_seed_tasks(SEED_FILE)
    config = SelfInstructConfig(seed_tasks=SEED_FILE, instances_per_prompt=4)
    boot = Bootstrapper(config, make_ctx(tmp_path), ScriptedLLM(), seeds)
    input_first = boot._instance_request("Add the two numbers.", classification=False)
    output_first = boot._instance_request("Tell whether the review is positive or negative.", True)
    assert "Write 4 different examples" in input_first[-1]["content"]
    assert input_first[-1]["content"].endswith("Task: Add the two numbers.")
    assert "an example for each of its class labels" in output_first[-1]["content"]
    # the worked examples are earlier turns, each answer holding several instances or labels
    answers = [m["content"] for m in input_first if m["role"] == "assistant"]
    with_input = [a for a in answers if "Input: none" not in a]
    assert with_input and all(a.count("Input:") >= 2 and a.count("Output:") >= 2 for a in with_input)
    # ...but a task that needs no input is answered once, its whole answer in one output
    no_input = [a for a in answers if "Input: none" in a]
    assert no_input and all(a.count("Output:") == 1 for a in no_input)
    assert any("```python" in a for a in no_input)  # a task asking for code is answered with the code
    # a task that works on a sentence it does not give is shown one answered with such sentences
    shown = [m["content"] for m in input_first if m["role"] == "user"]
    texts = [a for q, a in zip(shown, answers) if "the sentence" in q]
    assert texts and all("Input: none" not in a for a in texts)
    assert "When the task works on a text" in input_first[-1]["content"]
    labels = [m["content"] for m in output_first if m["role"] == "assistant"]
    assert labels and all(a.count("Class label:") >= 2 for a in labels)
    # several labels for one classification task, each kept as its own record
    reply = "Class label: even\nInput: 4\n\nClass label: odd\nInput: 7\n\nClass label: even\nInput: 7"
    boot._keep_instances("Is the number even or odd?", True, Completion(reply, 10, 10))
    got = {(r["input"], r["output"], r[DROP_REASON]) for r in boot.rows}
    assert got == {("4", "even", None), ("7", "odd", "conflicting_outputs"), ("7", "even", "conflicting_outputs")}


def test_a_task_without_input_keeps_one_answer(tmp_path):
    # what qwen2.5-coder-1.5b wrote for "Suggest three names for a TV show ...": one name per example
    reply = "Input: none\nOutput: The Shadow Zone\n\nInput: none\nOutput: The Shadow's End\n\nInput: none\nOutput: Veil"
    seeds = load_seed_tasks(SEED_FILE)
    boot = Bootstrapper(SelfInstructConfig(seed_tasks=SEED_FILE), make_ctx(tmp_path), ScriptedLLM(), seeds)
    boot._keep_instances("Suggest three names for a TV show about ghosts.", False, Completion(reply, 10, 10))
    got = [(r["output"], r[DROP_REASON]) for r in boot.rows]
    assert got == [("The Shadow Zone", None), ("The Shadow's End", "extra_answer_without_input"),
                   ("Veil", "extra_answer_without_input")]  # fmt: skip


def test_bootstrap_is_deterministic(tmp_path):
    config = SelfInstructConfig(seed_tasks=SEED_FILE, num_instructions=4, prompts_per_round=2)
    seeds = load_seed_tasks(SEED_FILE)
    first = Bootstrapper(config, make_ctx(tmp_path), ScriptedLLM(), seeds)
    second = Bootstrapper(config, make_ctx(tmp_path), ScriptedLLM(), seeds)
    first.run(), second.run()
    assert first.llm.calls == second.llm.calls


def test_config_resolves_seed_file_relative_to_spec(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        SelfInstructConfig.model_validate({"kind": "self_instruct"}, context={"base_dir": tmp_path})
    config = SelfInstructConfig.model_validate({}, context={"base_dir": SEED_FILE.parents[1]})
    assert config.seed_tasks == SEED_FILE.resolve()


# ---------------------------------------------------------------- held-out seed tasks


class CopyingLLM(ScriptedLLM):
    """Also proposes `copy` as a new task, and records every message of every request."""

    def __init__(self, copy: str) -> None:
        super().__init__()
        self.copy, self.messages = copy, []

    def generate(self, requests, sampling):
        self.messages += [m["content"] for r in requests for m in r]
        return super().generate(requests, sampling)

    def _reply(self, prompt: str) -> str:
        reply = super()._reply(prompt)
        return reply + f"\n13. {self.copy}" if prompt.startswith("Here are") else reply


def test_held_out_seed_tasks_are_never_shown_and_never_copied(tmp_path):
    seeds = load_seed_tasks(SEED_FILE)
    shown, held = split_held_out(seeds, 6, seed=3)
    assert len(held) == 6 and len(shown) == len(seeds) - 6 and set(held).isdisjoint(shown)
    assert split_held_out(seeds, 6, seed=3) == (shown, held) and split_held_out(seeds, 6, seed=4)[1] != held

    config = SelfInstructConfig(seed_tasks=SEED_FILE, num_instructions=6, prompts_per_round=2, hold_out=6)
    llm = CopyingLLM(copy=held[0].instruction)
    rows = Bootstrapper(config, make_ctx(tmp_path), llm, shown, held).run()
    everything = "\n".join(llm.messages)
    assert all(task.instruction not in everything for task in held)  # not in prompts, examples or shots
    copies = [r for r in rows if r["instruction"] == held[0].instruction]
    assert copies and all(r[DROP_REASON] == "rouge_similar" for r in copies)

    # what `synth train` reads: one instruct row per human-written instance
    assert held_out_rows(held[:1]) == [{"instruction": held[0].instruction, "input": i, "output": o}
                                       for i, o in held[0].instances]  # fmt: skip


def test_holding_out_nearly_every_seed_is_refused_before_ray(tmp_path):
    config = SelfInstructConfig(seed_tasks=SEED_FILE, hold_out=len(load_seed_tasks(SEED_FILE)) - 1)
    with pytest.raises(SpecError, match=r"hold_out 37 leaves fewer than 2 of the 38 seed tasks"):
        SelfInstruct(config, make_ctx(tmp_path, {"default": LLMSpec()})).check_inputs()


# ---------------------------------------------------------------- classification, real model


@pytest.mark.slow
def test_classification_agreement_with_qwen_on_the_labelled_instructions(tmp_path):
    """The whole step (the rule, then the model for the rest) on the hand-labelled instructions."""
    from synth.llm import make_backend

    spec = LLMSpec(engine="llama.cpp", model="qwen2.5-coder-0.5b", batch_size=16, threads=2, cache=False)
    try:
        llm = make_backend(spec)
        llm.load()
    except Exception as exc:  # noqa: BLE001 - not installed here (SYNTH_SKIP_QWEN=1, no llama-cpp-python)
        pytest.skip(f"qwen2.5-coder-0.5b through llama.cpp is not available: {exc}")
    config = SelfInstructConfig(seed_tasks=SEED_FILE)
    boot = Bootstrapper(config, make_ctx(tmp_path, {"default": spec}), llm, load_seed_tasks(SEED_FILE))
    labelled = labelled_instructions()
    verdicts = boot._classify([text for text, _ in labelled], round_=1)
    false_yes = sum(said and not truth for said, (_, truth) in zip(verdicts, labelled))
    false_no = sum(truth and not said for said, (_, truth) in zip(verdicts, labelled))
    print(f"classification, qwen2.5-coder-0.5b: {false_yes} false Yes of 32, {false_no} false No of 28")
    # measured 0 and 11 with names_its_labels (6 and 11 with the writing-verb rule alone, 34 s at load
    # 4.5-7); the step before the rules and the paper's wording gave 26 and 11
    assert false_yes <= 8 and false_no <= 14


# ---------------------------------------------------------------- end to end, real model, on Ray
# (`ray_session` is the shared session fixture of conftest.py)


# ---------------------------------------------------------------- end to end, real model


@pytest.mark.slow
def test_self_instruct_stage_with_local_model(tmp_path):
    config = SelfInstructConfig(
        seed_tasks=SEED_FILE, num_instructions=4, prompts_per_round=4, max_rounds=4, new_tasks_per_prompt=4,
        task_sampling={"max_tokens": 160, "temperature": 0.9}, instance_sampling={"max_tokens": 96},
    )  # fmt: skip
    ctx = make_ctx(tmp_path, {"default": LLMSpec(backend="local", batch_size=8)})
    table = SelfInstruct(config, ctx).transform(None)  # what the runner's one task runs

    assert table.schema.equals(STAGE_SCHEMA)
    kept = table.filter(pa.compute.is_null(table[DROP_REASON]))
    assert kept.num_rows >= 1, table.to_pylist()
    assert kept.select(INSTRUCT_SCHEMA.names).schema.equals(INSTRUCT_SCHEMA)
    assert set(kept["model"].to_pylist()) == {"SmolLM2-135M-Instruct.Q4_1"}
