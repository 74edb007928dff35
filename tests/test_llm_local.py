"""The local transformers engine on the real embedded SmolLM2: text, seeds, token counts, continuous batching."""

from __future__ import annotations

import copy

import pytest

from synth.errors import LLMError
from synth.llm import SamplingParams
from synth.llm.local import PREFILL_CHUNK, PREFIX_CACHE_MB, LocalClient, PrefixCache
from synth.llm.models import EMBEDDED_NAME, converted_embedded_model, is_model_dir
from synth.spec import LLMSpec

QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three fruits, separated by commas, and say which one you like best and why.",
    "Hi!",
    "Explain in two short sentences why the sky looks blue during the day but red at sunset.",
]


def ask(*questions: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in questions]


# One thread: on a busy test machine, spinning worker threads stall for far longer than they save.
SPEC = LLMSpec(batch_size=4, threads=1)


@pytest.fixture(scope="module")
def client() -> LocalClient:
    client = LocalClient(SPEC)
    client.load()
    return client


def with_slots(client: LocalClient, slots: int) -> LocalClient:
    """The loaded client with another slot count (same weights, no second load)."""
    other = copy.copy(client)
    other.spec = client.spec.model_copy(update={"batch_size": slots})
    other._cache = None
    return other


def with_prefix_cache(client: LocalClient, slots: int, budget: int = PREFIX_CACHE_MB << 20) -> LocalClient:
    """`with_slots`, with a prefix cache of its own holding up to `budget` bytes (0 keeps nothing)."""
    other = with_slots(client, slots)
    other.prefixes = PrefixCache(budget)
    return other


def prompt_ids(client: LocalClient, request) -> list[int]:
    text = client.tokenizer.apply_chat_template(request, add_generation_prompt=True, tokenize=False)
    return client.tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_length(client: LocalClient, request) -> int:
    return len(prompt_ids(client, request))


def shared_prefix_length(client: LocalClient, requests) -> int:
    """How many tokens every request's prompt opens with alike."""
    prompts = [prompt_ids(client, r) for r in requests]
    return next((i for i, ids in enumerate(zip(*prompts)) if len(set(ids)) > 1), min(map(len, prompts)))


def test_a_missing_model_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(LLMError, match=str(missing)):
        LocalClient(LLMSpec(model=str(missing))).load()


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LLMError, match="config.json and"):
        LocalClient(LLMSpec(model=str(tmp_path))).load()


def test_model_id_is_known_without_loading():
    assert LocalClient(LLMSpec()).model_id == EMBEDDED_NAME
    assert LocalClient(LLMSpec()).model is None


@pytest.mark.slow
def test_generates_an_answer_per_chat_request(client):
    requests = ask("What is the capital of France?", "Name a colour.")
    out = client.generate(requests, SamplingParams(max_tokens=24, temperature=0))
    assert len(out) == 2
    assert "Paris" in out[0].text
    assert all(c.text.strip() and c.finish_reason in ("stop", "length") and not c.cached for c in out)


@pytest.mark.slow
def test_same_seed_gives_the_same_text(client):
    sampling = SamplingParams(max_tokens=16, temperature=1.0, seed=5)
    first = client.generate(ask(*QUESTIONS[:3]), sampling)
    again = client.generate(ask(*QUESTIONS[:3]), sampling)
    other = client.generate(ask(*QUESTIONS[:3]), sampling.model_copy(update={"seed": 6}))
    assert [c.text for c in again] == [c.text for c in first]
    assert [c.text for c in other] != [c.text for c in first]


@pytest.mark.slow
def test_token_counts_are_exact(client):
    requests = ask(QUESTIONS[2], "What is the capital of France?")
    long_answer, short_answer = client.generate(requests, SamplingParams(max_tokens=7, temperature=0))
    assert long_answer.prompt_tokens == prompt_length(client, requests[0])
    assert short_answer.prompt_tokens == prompt_length(client, requests[1])
    assert (long_answer.completion_tokens, long_answer.finish_reason) == (7, "length")

    (done,) = client.generate(requests[1:], SamplingParams(max_tokens=40, temperature=0))
    assert done.finish_reason == "stop"
    # Ended by the end-of-turn token, which is not counted: the count is the answer's tokens.
    assert done.completion_tokens == len(client.tokenizer(done.text, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_stop_strings_end_the_answer(client):
    (free,) = client.generate(ask(QUESTIONS[2]), SamplingParams(max_tokens=24, temperature=0))
    stop = free.text.split()[3]  # a word the answer is known to contain
    (stopped,) = client.generate(ask(QUESTIONS[2]), SamplingParams(max_tokens=24, temperature=0, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert free.text.startswith(stopped.text)
    assert stopped.completion_tokens < free.completion_tokens


@pytest.mark.slow
def test_a_request_ending_with_the_assistants_text_goes_on_from_it(client):
    sampling = SamplingParams(max_tokens=16, temperature=0)
    (free,) = client.generate(ask(QUESTIONS[0]), sampling)
    words = free.text.split(" ")
    assert len(words) >= 4, free.text
    begun = " ".join(words[:2])
    (continued,) = client.generate([ask(QUESTIONS[0])[0] + [{"role": "assistant", "content": begun}]], sampling)
    assert continued.prompt_tokens > free.prompt_tokens
    assert not continued.text.startswith(begun), "the completion is what follows the given start"
    assert (begun + continued.text).startswith(" ".join(words[:4])), (free.text, continued.text)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_batch_of_mixed_lengths_gives_the_texts_of_one_by_one(client, temperature):
    sampling = SamplingParams(max_tokens=12, temperature=temperature, seed=2)
    batched = client.generate(ask(*QUESTIONS), sampling)
    single = LocalClient(SPEC.model_copy(update={"batch_size": 1}))
    one_by_one = [single.generate([r], sampling)[0] for r in ask(*QUESTIONS)]
    assert [c.text for c in batched] == [c.text for c in one_by_one]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in one_by_one]


@pytest.mark.slow
@pytest.mark.parametrize("slots", [2, 3])
def test_rows_refilled_into_freed_slots_give_the_texts_of_one_by_one(client, slots):
    # More requests than slots: every slot is reused by later requests, next to rows of other
    # lengths at other positions, while earlier ones are still running.
    sampling = SamplingParams(max_tokens=10, temperature=0.9, seed=4)
    requests = ask(*QUESTIONS, "Name a colour.", "What is two plus two?")
    batched = with_slots(client, slots).generate(requests, sampling)
    one_by_one = [client.generate([r], sampling)[0] for r in requests]
    assert [c.text for c in batched] == [c.text for c in one_by_one]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in one_by_one]


@pytest.mark.slow
def test_a_row_that_finishes_at_once_and_one_that_runs_to_max_tokens_share_the_slots(client):
    greeting, sea, capital = ask("Hi!", "Write one sentence about the sea.", "What is the capital of France?")
    (first,) = client.generate([greeting], SamplingParams(max_tokens=1, temperature=0))
    # A stop string the greeting's first token completes: that row ends after one token.
    sampling = SamplingParams(max_tokens=9, temperature=0, stop=(first.text,))
    one_by_one = [client.generate([r], sampling)[0] for r in (greeting, sea, capital)]
    assert first.text not in one_by_one[1].text and one_by_one[1].finish_reason == "length"

    at_once, long, refilled = with_slots(client, 2).generate([greeting, sea, capital], sampling)
    assert (at_once.text, at_once.completion_tokens, at_once.finish_reason) == ("", 1, "stop")
    assert (long.completion_tokens, long.finish_reason) == (9, "length")
    assert [c.text for c in (at_once, long, refilled)] == [c.text for c in one_by_one]


@pytest.mark.slow
def test_the_embedded_gguf_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE", str(tmp_path))
    folder = converted_embedded_model()
    assert folder == tmp_path / "models" / EMBEDDED_NAME
    assert is_model_dir(folder) and (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [EMBEDDED_NAME]  # no temporary folder left
    written = (folder / "config.json").stat().st_mtime_ns
    assert converted_embedded_model() == folder
    assert (folder / "config.json").stat().st_mtime_ns == written


@pytest.mark.slow
def test_prompts_that_open_alike_reuse_their_chunks_and_keep_their_texts(client):
    # A long shared opening (as a stage's few-shot examples are) spans several whole prefill chunks.
    examples = " ".join(f"Example {i}: the word '{w}' has {len(w)} letters." for i, w in enumerate(QUESTIONS[4].split()))
    requests = [[{"role": "user", "content": f"{examples}\nNow: {q}"}] for q in QUESTIONS[:3]]
    assert prompt_length(client, requests[0]) > 2 * PREFILL_CHUNK
    sampling = SamplingParams(max_tokens=8, temperature=0.8, seed=3)

    uncached = with_prefix_cache(client, 2, 0)  # keeps nothing
    expected = uncached.generate(requests, sampling)
    assert uncached.prefixes.reused_tokens == 0

    cached = with_prefix_cache(client, 2)
    got = cached.generate(requests, sampling)
    # Every request after the first reuses its shared opening but for the part of a chunk at its end.
    shared = shared_prefix_length(client, requests)
    assert cached.prefixes.reused_tokens >= 2 * (shared - PREFILL_CHUNK) >= 2 * PREFILL_CHUNK
    assert [c.text for c in got] == [c.text for c in expected]
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in expected]


@pytest.mark.slow
def test_a_prompt_asked_under_several_seeds_in_one_call_is_fed_once_and_keeps_each_seeds_text(client):
    # code_inputs asks each function's prompt under six seeds in one call; here three, beside others.
    sea, capital = ask(QUESTIONS[1], QUESTIONS[0])
    requests, seeds = [sea, sea, sea, capital, sea], [5, 6, 7, 5, 8]
    sampling = SamplingParams(max_tokens=10, temperature=0.9)
    alone = [client.generate([r], sampling.model_copy(update={"seed": s}))[0] for r, s in zip(requests, seeds)]
    assert len({c.text for c in alone}) > 2, "the seeds give different answers"

    # What the two prompts share (the chat template's opening turn, a chunk of its own) is reused anyway.
    once = with_prefix_cache(client, 2)
    once.generate([sea, capital], sampling)
    opening_reused = once.prefixes.reused_tokens

    for slots, prefix_budget in ((2, PREFIX_CACHE_MB << 20), (3, 0)):
        shared = with_prefix_cache(client, slots, prefix_budget)
        got = shared.generate(requests, sampling, seeds=seeds)
        assert [c.text for c in got] == [c.text for c in alone]
        assert [c.completion_tokens for c in got] == [c.completion_tokens for c in alone]
        if prefix_budget:  # the sea prompt was fed once: its three repeats copied it
            assert shared.prefixes.reused_tokens == 3 * prompt_length(client, sea) + opening_reused


@pytest.mark.slow
def test_a_prompt_asked_once_leaves_its_last_chunk_out_of_the_prefix_cache(client):
    # Only the same prompt again could use a last chunk; kept, it pushes shared chunks out.
    # Every call has two requests, so the key/value memory of the first is reused, not renewed.
    sea, capital = ask(QUESTIONS[1], QUESTIONS[0])
    both = prompt_length(client, sea) + prompt_length(client, capital)
    sampling = SamplingParams(max_tokens=4, temperature=0)
    cache = with_prefix_cache(client, 2)
    cache.generate([sea, capital], sampling)
    before = cache.prefixes.reused_tokens
    cache.generate([sea, capital], sampling)
    assert 0 < cache.prefixes.reused_tokens - before < both  # their openings, not their last chunks

    cache.generate([capital, capital], sampling)  # asked twice in one call: its last chunk is kept
    before = cache.prefixes.reused_tokens
    cache.generate([capital, sea], sampling)
    assert prompt_length(client, capital) <= cache.prefixes.reused_tokens - before < both


@pytest.mark.slow
def test_shared_few_shot_turns_shorter_than_a_chunk_are_fed_once_and_keep_their_texts(client):
    # Worked examples as earlier turns, as the stages send them: together shorter than one prefill
    # chunk, so only cuts at the ends of turns let later prompts reuse them.
    shots = [{"role": "user", "content": "Is 'Name a colour.' a question? Answer Yes or No."},
             {"role": "assistant", "content": "No"},
             {"role": "user", "content": "Is 'Hi!' a question? Answer Yes or No."},
             {"role": "assistant", "content": "No"}]  # fmt: skip
    requests = [shots + [{"role": "user", "content": f"Is '{q}' a question? Answer Yes or No."}] for q in QUESTIONS]
    # The turns up to the second question's end, less the "\n<|im_start|>assistant\n" the template adds.
    shared = prompt_length(client, shots[:3]) - 4
    assert all(prompt_length(client, r) < PREFILL_CHUNK for r in requests)  # no whole chunk to reuse
    sampling = SamplingParams(max_tokens=3, temperature=0.8, seed=5)

    uncached = with_prefix_cache(client, 2, 0)
    expected = uncached.generate(requests, sampling)

    cached = with_prefix_cache(client, 2)
    got = cached.generate(requests, sampling)
    assert cached.prefixes.reused_tokens >= (len(requests) - 1) * shared
    assert [c.text for c in got] == [c.text for c in expected]
    one_by_one = [client.generate([r], sampling)[0] for r in requests]
    assert [c.text for c in got] == [c.text for c in one_by_one]


@pytest.mark.slow
def test_a_shared_preamble_before_a_blank_line_is_fed_once_and_keeps_its_texts(client):
    # One turn each, as a template's preamble and then the text that differs: the turn's opening
    # up to its blank line is the same in every prompt and shorter than a prefill chunk.
    preamble = "Read the question below and answer it in one short sentence, as plainly as you can."
    requests = ask(*(f"{preamble}\n\n{q}" for q in QUESTIONS))
    shared = shared_prefix_length(client, requests)
    assert all(prompt_length(client, r) < PREFILL_CHUNK for r in requests)  # no whole chunk to reuse
    sampling = SamplingParams(max_tokens=4, temperature=0.8, seed=6)

    uncached = with_prefix_cache(client, 2, 0)
    expected = uncached.generate(requests, sampling)

    cached = with_prefix_cache(client, 2)
    got = cached.generate(requests, sampling)
    assert cached.prefixes.reused_tokens >= (len(requests) - 1) * shared
    assert [c.text for c in got] == [c.text for c in expected]
