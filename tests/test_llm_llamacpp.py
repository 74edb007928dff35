"""The local backend's llama.cpp engine on the real embedded SmolLM2 GGUF: engine choice, seeds,
token counts, stop strings, slots refilled as rows finish, prompt openings fed once."""

from __future__ import annotations

import pytest

from synth.errors import LLMError
from synth.llm import SamplingParams, make_backend
from synth.llm.engines import LLAMA_CPP_MIN_BYTES, engine_for
from synth.llm.local import PREFILL_CHUNK, PREFIX_CACHE_MB, LocalClient, chunk_end
from synth.llm.models import EMBEDDED_NAME, converted_embedded_model, embedded_gguf
from synth.spec import LLMSpec

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup.sh)")

from synth.llm.llamacpp import CONTEXT_STEP, LlamaCppClient  # noqa: E402
from synth.llm.prefix_streams import PrefixStreams  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three fruits, separated by commas, and say which one you like best and why.",
    "Hi!",
    "Explain in two short sentences why the sky looks blue during the day but red at sunset.",
    "Name a colour.",
]

SPEC = LLMSpec(batch_size=4, threads=1, engine="llama.cpp")


def ask(*questions: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in questions]


@pytest.fixture(scope="module")
def client() -> LlamaCppClient:
    client = LlamaCppClient(SPEC, embedded_gguf(), EMBEDDED_NAME)
    client.load()
    yield client
    client.close()


_OTHERS: list[LlamaCppClient] = []
"""Clients the tests made beside the module's, closed when the module's tests are done."""


@pytest.fixture(scope="module", autouse=True)
def close_other_clients():
    yield
    while _OTHERS:
        _OTHERS.pop().close()


def with_slots(client: LlamaCppClient, slots: int) -> LlamaCppClient:
    other = LlamaCppClient(SPEC.model_copy(update={"batch_size": slots}), client.gguf, client.model_id)
    other.load()
    _OTHERS.append(other)
    return other


def with_prefix_cache(client: LlamaCppClient, slots: int, budget: int = PREFIX_CACHE_MB << 20) -> LlamaCppClient:
    """`with_slots`, with prefix streams of its own holding up to `budget` bytes (0 keeps nothing)."""
    other = with_slots(client, slots)
    other.prefixes = PrefixStreams(budget)
    return other


def opening(client: LlamaCppClient, request) -> int:
    """Where a prompt's last chunk starts: what a later prompt can copy of it."""
    prompt, start, ends = client.prompt_tokens(request), 0, []
    while start < len(prompt):
        start = chunk_end(prompt, start, client.turn_ends, client.line_ends, client.blank_line_ends)
        ends.append(start)
    return ends[-2]


def shared_prefix_length(client: LlamaCppClient, requests) -> int:
    prompts = [client.prompt_tokens(r) for r in requests]
    return next(i for i, ids in enumerate(zip(*prompts)) if len(set(ids)) > 1)


def test_the_engine_is_chosen_by_the_spec_and_auto_by_the_model_and_device(tmp_path):
    # auto: the small embedded GGUF on transformers, a large GGUF file on llama.cpp (by its size:
    # a sparse file stands in for a model here, and auto never opens it)
    assert engine_for(LLMSpec(device="cpu")) == "transformers"
    large = tmp_path / "large.gguf"
    with large.open("wb") as f:
        f.truncate(LLAMA_CPP_MIN_BYTES)
    assert engine_for(LLMSpec(device="cpu", model=str(large))) == "llama.cpp"
    assert engine_for(LLMSpec(device="cuda", model=str(large))) == "transformers"
    assert isinstance(make_backend(LLMSpec(device="cpu", engine="llama.cpp")), LlamaCppClient)
    assert isinstance(make_backend(LLMSpec(device="cpu", engine="transformers")), LocalClient)
    assert engine_for(LLMSpec(device="cuda")) == "transformers"


@pytest.mark.slow
def test_auto_takes_transformers_for_a_hugging_face_folder():
    spec = LLMSpec(device="cpu", model=str(converted_embedded_model()))
    assert engine_for(spec) == "transformers"
    assert isinstance(make_backend(spec), LocalClient)


def test_a_missing_gguf_file_is_named(tmp_path):
    missing = tmp_path / "model.gguf"
    with pytest.raises(Exception, match=str(missing)):
        make_backend(LLMSpec(model=str(missing), device="cpu", engine="llama.cpp"))


@pytest.mark.slow
def test_answers_and_caches_apart_from_the_transformers_engine(client):
    out = client.generate(ask("Write one sentence about the sea.", "Name a colour."), SamplingParams(max_tokens=24, temperature=0))
    assert "sea" in out[0].text.lower()
    assert all(c.text.strip() and c.finish_reason in ("stop", "length") for c in out)
    assert client.backend != LocalClient.backend  # another engine, other texts: another cache key


@pytest.mark.slow
def test_same_seed_gives_the_same_text(client):
    sampling = SamplingParams(max_tokens=16, temperature=1.0, seed=5)
    first = client.generate(ask(*QUESTIONS), sampling)
    again = client.generate(ask(*QUESTIONS), sampling)
    other = client.generate(ask(*QUESTIONS), sampling.model_copy(update={"seed": 6}))
    assert [c.text for c in again] == [c.text for c in first]
    assert [c.text for c in other] != [c.text for c in first]


@pytest.mark.slow
def test_token_counts_and_stop_strings(client):
    requests = ask(QUESTIONS[2], "What is the capital of France?")
    long_answer, short_answer = client.generate(requests, SamplingParams(max_tokens=7, temperature=0))
    assert long_answer.prompt_tokens == len(client.prompt_tokens(requests[0]))
    assert (long_answer.completion_tokens, long_answer.finish_reason) == (7, "length")

    (free,) = client.generate(requests[:1], SamplingParams(max_tokens=24, temperature=0))
    stop = free.text.split()[3]
    (stopped,) = client.generate(requests[:1], SamplingParams(max_tokens=24, temperature=0, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert free.text.startswith(stopped.text) and stopped.completion_tokens < free.completion_tokens


@pytest.mark.slow
def test_a_request_ending_with_the_assistants_text_goes_on_from_it(client):
    sampling = SamplingParams(max_tokens=16, temperature=0)
    (free,) = client.generate(ask(QUESTIONS[1]), sampling)
    words = free.text.split(" ")
    assert len(words) >= 4, free.text
    begun = " ".join(words[:2])
    (continued,) = client.generate([ask(QUESTIONS[1])[0] + [{"role": "assistant", "content": begun}]], sampling)
    assert continued.prompt_tokens > free.prompt_tokens
    assert (begun + continued.text).startswith(" ".join(words[:4])), (free.text, continued.text)


@pytest.mark.slow
def test_a_row_that_finishes_at_once_and_one_that_runs_to_max_tokens_share_the_slots(client):
    greeting, sea, capital = ask("Hi!", "Write one sentence about the sea.", "What is the capital of France?")
    (first,) = client.generate([greeting], SamplingParams(max_tokens=1, temperature=0))
    sampling = SamplingParams(max_tokens=9, temperature=0, stop=(first.text,))
    at_once, long, refilled = with_slots(client, 2).generate([greeting, sea, capital], sampling)
    assert (at_once.text, at_once.completion_tokens, at_once.finish_reason) == ("", 1, "stop")
    assert (long.completion_tokens, long.finish_reason) == (9, "length")
    (alone,) = client.generate([capital], sampling)
    assert refilled.text.strip() and (refilled.completion_tokens, refilled.finish_reason) == (alone.completion_tokens, alone.finish_reason)


def test_running_rows_keep_consecutive_slots_when_a_middle_one_finishes(client, monkeypatch):
    """With one key/value stream per slot, llama.cpp splits a decode batch at every gap in its
    sequence ids (one pass over the weights each): the last running row moves down into a freed slot."""
    requests = ask("Name a colour.", "Answer with one word: is water wet?", "What is the capital of France?")
    three = with_slots(client, 3)
    decoded, decode = [], three._decode

    def record(ctx):
        batch = three.batch
        decoded.append(list(dict.fromkeys(batch.seq_id[n][0] for n in range(batch.n_tokens))))
        decode(ctx)

    monkeypatch.setattr(three, "_decode", record)
    colour, water, capital = three.generate(requests, SamplingParams(max_tokens=12, temperature=0))
    assert water.finish_reason == "stop" and colour.completion_tokens == capital.completion_tokens == 12
    assert [0, 1] in decoded  # after the middle row finished
    assert all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in decoded), decoded


def test_a_grammar_decides_what_the_model_may_write(client):
    """The chain draws and the grammar checks (redrawing from the tokens it allows): the answer is in
    the grammar's language, where the model left alone writes a sentence."""
    sampling = SamplingParams(max_tokens=8, temperature=0.8, seed=2, grammar='root ::= "yes" | "no"')
    answers = client.generate(ask(*QUESTIONS[:3]), sampling)
    assert {a.text for a in answers} <= {"yes", "no"}, [a.text for a in answers]
    assert all(a.finish_reason == "stop" for a in answers)


def test_a_repeat_penalty_breaks_a_greedy_loop(client):
    """The embedded model, greedy, loops on this request; a repeat penalty over the last generated
    tokens makes it write something else."""
    request = ask("Write the word 'apple' twenty times, separated by spaces.")
    greedy = SamplingParams(max_tokens=40, temperature=0)
    (looping,) = client.generate(request, greedy)
    (penalised,) = client.generate(request, greedy.model_copy(update={"repeat_penalty": 1.5}))
    loops = looping.text.lower().count("apple")
    assert loops >= 10, looping.text
    assert penalised.text.lower().count("apple") < loops / 2, penalised.text


def test_a_grammar_llama_cpp_cannot_read_is_an_error(client):
    with pytest.raises(LLMError, match="GBNF grammar"):
        client.generate(ask("Hi!"), SamplingParams(max_tokens=4, grammar="start ::= 'x"))


@pytest.mark.slow
def test_requests_under_their_own_seeds_in_one_call_give_each_seeds_text(client):
    # One slot, so each row is fed alone, as a request asked by itself is (llama.cpp's kernels
    # do not promise a row's numbers whatever rows are beside it).
    sampling = SamplingParams(max_tokens=12, temperature=1.0)
    sea, colour = ask(QUESTIONS[1], QUESTIONS[5])
    requests, seeds = [sea, sea, colour], [5, 6, 5]
    alone = [client.generate([r], sampling.model_copy(update={"seed": s}))[0].text for r, s in zip(requests, seeds)]
    assert alone[0] != alone[1]
    assert [c.text for c in with_slots(client, 1).generate(requests, sampling, seeds=seeds)] == alone


def examples(n: int) -> str:
    """A stage's few-shot examples (~15 tokens each), before a blank line and the text that differs."""
    words = (QUESTIONS[4].split() * 3)[:n]
    return " ".join(f"Example {i}: the word '{w}' has {len(w)} letters." for i, w in enumerate(words))


EXAMPLES = examples(20)  # whole prefill chunks and a part of one


@pytest.mark.slow
def test_prompts_that_open_alike_feed_their_shared_opening_once_and_keep_their_texts(client):
    requests = ask(*(f"{EXAMPLES}\n\n{q}" for q in QUESTIONS[:3]))
    shared = shared_prefix_length(client, requests)
    assert shared > 2 * PREFILL_CHUNK
    sampling = SamplingParams(max_tokens=6, temperature=0.8, seed=3)

    uncached = with_prefix_cache(client, 2, 0)
    expected = uncached.generate(requests, sampling)
    assert uncached.prefixes.reused_tokens == 0

    cached = with_prefix_cache(client, 2)
    got = cached.generate(requests, sampling)
    # Fed: one shared opening (cut at its blank line) and each prompt's own tail.
    fed = sum(c.prompt_tokens for c in got) - cached.prefixes.reused_tokens
    assert fed == shared + sum(c.prompt_tokens - shared for c in got)
    assert [c.text for c in got] == [c.text for c in expected]
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in expected]


def test_a_rows_own_prompt_goes_in_beside_the_running_rows_and_the_shared_opening_alone(client, monkeypatch):
    """The opening the rows of a call share is fed once, alone (what a kept copy of it must hold);
    a row's own chunks go into the decode steps of the rows already running, not passes of their own."""
    greeting, *requests = ask(*(f"{EXAMPLES}\n\n{q}" for q in ("Hi!", *QUESTIONS[:3])))
    (first,) = client.generate([greeting], SamplingParams(max_tokens=1, temperature=0))
    requests = [greeting, *requests]  # the greeting ends at its first token, so its slot is refilled at once
    two = with_prefix_cache(client, 2)
    batches, decode = [], two._decode

    def record(ctx):
        batch = two.batch
        tokens = [batch.seq_id[n][0] for n in range(batch.n_tokens)]
        batches.append({s: tokens.count(s) for s in tokens})
        decode(ctx)

    monkeypatch.setattr(two, "_decode", record)
    two.generate(requests, SamplingParams(max_tokens=6, temperature=0, stop=(first.text,)))
    alone = [b for b in batches if len(b) == 1 and min(b.values()) > 1]
    assert 2 * PREFILL_CHUNK < sum(n for b in alone for n in b.values()) <= shared_prefix_length(client, requests)
    beside = [b for b in batches if len(b) == 2 and sorted(b.values())[0] == 1 and sorted(b.values())[1] > 1]
    assert beside, batches


@pytest.mark.slow
def test_a_prompt_asked_under_two_seeds_feeds_its_opening_once_and_a_later_call_copies_it(client):
    """Rows of one call that open alike share their opening (all but the last chunk, fed again for
    the logits of the first token): the first row feeds and keeps it, the second copies it, and so
    does a later call asking it twice. A prompt asked once is all its own: nothing kept or copied."""
    (request,) = ask(f"{EXAMPLES}\n\n{QUESTIONS[1]}")
    sampling = SamplingParams(max_tokens=8, temperature=1.0, seed=4)
    cached = with_prefix_cache(client, 1)
    (alone,) = cached.generate([request], sampling)
    assert cached.prefixes.reused_tokens == 0
    first, other_seed = cached.generate([request, request], sampling, seeds=[4, 9])
    assert cached.prefixes.reused_tokens == opening(client, request)
    again = cached.generate([request, request], sampling, seeds=[4, 9])
    assert cached.prefixes.reused_tokens == 3 * opening(client, request)
    (alone_9,) = with_prefix_cache(client, 1, 0).generate([request], sampling.model_copy(update={"seed": 9}))
    assert [c.text for c in again] == [first.text, other_seed.text] == [alone.text, alone_9.text]


@pytest.mark.slow
def test_texts_do_not_depend_on_what_the_prefix_cache_holds(client):
    """A copied opening holds what feeding it gives: the same texts run after run, whether the
    cache starts empty, holds every opening already, or keeps nothing."""
    requests = ask(*(f"{EXAMPLES}\n\n{q}" for q in QUESTIONS))
    sampling = SamplingParams(max_tokens=10, temperature=1.0, seed=7)
    cached = with_prefix_cache(client, 3)
    runs = [cached.generate(requests, sampling), cached.generate(requests, sampling),
            with_prefix_cache(client, 3, 0).generate(requests, sampling)]  # fmt: skip
    assert [c.text for c in runs[1]] == [c.text for c in runs[0]] == [c.text for c in runs[2]]
    assert len({c.text for c in runs[0]}) > 1


@pytest.mark.slow
def test_the_least_recently_used_opening_goes_when_the_budget_is_full(client):
    few_shot = {name: [{"role": "user", "content": f"{examples(10)} ({name})\n\nSay {name}."}] for name in "ab"}
    sampling = SamplingParams(max_tokens=2, temperature=0)
    # Prompts under CONTEXT_STEP - 2 tokens: a context of CONTEXT_STEP tokens a slot and a stream.
    assert all(len(client.prompt_tokens(r)) + 2 < CONTEXT_STEP for r in few_shot.values())
    stream = CONTEXT_STEP * client.kv_bytes_per_token
    reused = {}
    for streams in (1, 2):
        cache = with_prefix_cache(client, 1, streams * stream)
        cache.generate([few_shot["a"]] * 2, sampling)  # twice, so the call keeps its opening
        cache.generate([few_shot["b"]] * 2, sampling)  # in one stream, b's opening takes a's place
        before = cache.prefixes.reused_tokens
        cache.generate([few_shot["a"]] * 2, sampling)
        reused[streams] = cache.prefixes.reused_tokens - before
    a = opening(client, few_shot["a"])  # what the second row of each call copies from the first
    assert reused[2] == 2 * a
    # In one stream the first row finds only what b's opening shares with a's.
    assert reused[1] - a < shared_prefix_length(client, list(few_shot.values())) < reused[2] - a
