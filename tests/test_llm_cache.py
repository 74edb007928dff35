"""The request cache and accounting: hits, counters, cost, failures that keep finished work."""

from __future__ import annotations

import json

import pytest

from synth.errors import LLMError
from synth.llm import Completion, SamplingParams, make_client
from synth.llm.cache import Backend, CachedClient, Payer, ResponseCache, request_key
from synth.llm.local import LocalClient
from synth.spec import LLMPrices, LLMSpec

GREEDY = SamplingParams(max_tokens=12, temperature=0, seed=3)


def ask(*questions: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in questions]


class WordCounter(Backend):
    """A small deterministic backend: answers with the word count of the last message.

    It can be told to fail on a given request, after handing over the ones before it.
    """

    backend = "words"

    def __init__(self, fail_on: str | None = None):
        super().__init__()
        self.fail_on = fail_on
        self.generated: list[str] = []

    @property
    def model_id(self) -> str:
        return "word-counter"

    def generate(self, requests, sampling, on_completion=None):
        out = []
        for i, request in enumerate(requests):
            content = request[-1]["content"]
            if content == self.fail_on:
                raise LLMError(f"word-counter: refused {content!r}")
            words = len(content.split())
            completion = Completion(text=f"{words} words", prompt_tokens=words, completion_tokens=2)
            self.generated.append(content)
            if on_completion is not None:
                on_completion(i, completion)
            out.append(completion)
        return out


def test_second_call_is_answered_from_the_cache(tmp_path):
    backend, stats = WordCounter(), []
    client = CachedClient(backend, ResponseCache(tmp_path), stats.append)
    first = client.generate(ask("one two", "three"), GREEDY)
    second = client.generate(ask("one two", "three", "four five six"), GREEDY)

    assert [c.text for c in second] == ["2 words", "1 words", "3 words"]
    assert [c.cached for c in first] == [False, False]
    assert [c.cached for c in second] == [True, True, False]
    assert backend.generated == ["one two", "three", "four five six"]
    assert stats[1]["llm_requests"] == 3
    assert stats[1]["llm_cache_hits"] == 2
    assert stats[1]["llm_backend_calls"] == 1
    assert stats[1]["llm_prompt_tokens"] == 3  # cache hits cost no tokens


def test_one_file_per_request_under_its_key(tmp_path):
    client = CachedClient(WordCounter(), ResponseCache(tmp_path))
    client.generate(ask("hello there"), GREEDY)
    key = request_key("words", "word-counter", ask("hello there")[0], GREEDY)
    entry = json.loads((tmp_path / key[:2] / f"{key}.json").read_text())
    assert entry["completion"]["text"] == "2 words"
    assert entry["request"]["messages"] == ask("hello there")[0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_covers_model_messages_and_every_sampling_param():
    base = request_key("local", "m", ask("hi")[0], GREEDY)
    assert base == request_key("local", "m", ask("hi")[0], SamplingParams(max_tokens=12, temperature=0, seed=3))
    assert base != request_key("openai", "m", ask("hi")[0], GREEDY)
    assert base != request_key("local", "other", ask("hi")[0], GREEDY)
    assert base != request_key("local", "m", ask("hi!")[0], GREEDY)
    assert base != request_key("local", "m", ask("hi")[0], GREEDY.model_copy(update={"seed": 4}))
    assert base != request_key("local", "m", ask("hi")[0], GREEDY.model_copy(update={"stop": ("\n",)}))
    assert base != request_key("local", "m", ask("hi")[0], GREEDY.model_copy(update={"repeat_penalty": 1.1}))


def test_identical_requests_in_one_call_are_generated_once(tmp_path):
    backend, stats = WordCounter(), []
    out = CachedClient(backend, ResponseCache(tmp_path), stats.append).generate(ask("a b", "a b", "c"), GREEDY)
    assert [c.text for c in out] == ["2 words", "2 words", "1 words"]
    assert backend.generated == ["a b", "c"]
    assert stats[0]["llm_backend_calls"] == 2


def test_cost_from_prices_per_million_tokens(tmp_path):
    stats = []
    prices = LLMPrices(prompt_per_million=2.0, completion_per_million=10.0)
    client = CachedClient(WordCounter(), ResponseCache(tmp_path), stats.append, prices)
    client.generate(ask("one two three"), GREEDY)
    client.generate(ask("one two three"), GREEDY)
    assert stats[0]["llm_cost_usd"] == pytest.approx((3 * 2.0 + 2 * 10.0) / 1e6)
    assert stats[1]["llm_cost_usd"] == 0


def test_a_failing_call_keeps_what_finished_and_still_reports(tmp_path):
    stats = []
    client = CachedClient(WordCounter(fail_on="boom"), ResponseCache(tmp_path), stats.append)
    with pytest.raises(LLMError, match="boom"):
        client.generate(ask("one", "two words", "boom", "never reached"), GREEDY)
    assert stats[0]["llm_backend_calls"] == 2

    retry = CachedClient(WordCounter(), ResponseCache(tmp_path), stats.append)
    out = retry.generate(ask("one", "two words", "boom", "never reached"), GREEDY)
    assert [c.cached for c in out] == [True, True, False, False]


def test_a_damaged_entry_is_regenerated(tmp_path):
    client = CachedClient(WordCounter(), ResponseCache(tmp_path))
    client.generate(ask("x y"), GREEDY)
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text("{not json")
    (again,) = client.generate(ask("x y"), GREEDY)
    assert again.text == "2 words" and not again.cached
    assert json.loads(entry.read_text())["completion"]["text"] == "2 words"


def test_make_client_without_cache_when_the_spec_says_so(tmp_path):
    assert make_client(LLMSpec(cache=False), cache_dir=tmp_path).cache is None
    assert make_client(LLMSpec(), cache_dir=None).cache is None
    assert make_client(LLMSpec(), cache_dir=tmp_path).cache.root == tmp_path


class CountingLocal(LocalClient):
    """The real local backend, counting the requests it actually generates."""

    def __init__(self, spec: LLMSpec):
        super().__init__(spec)
        self.generated = 0

    def generate(self, requests, sampling, on_completion=None):
        self.generated += len(requests)
        return super().generate(requests, sampling, on_completion)


@pytest.mark.slow
def test_local_backend_is_not_called_again_for_cached_requests(tmp_path):
    backend, stats = CountingLocal(LLMSpec(batch_size=4, threads=1)), []
    client = CachedClient(backend, ResponseCache(tmp_path), stats.append)
    requests = ask("Name a colour.", "Name an animal.")
    sampling = SamplingParams(max_tokens=8, temperature=0.7, seed=11)

    first = client.generate(requests, sampling)
    second = client.generate(requests, sampling)

    assert backend.generated == 2
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second)
    assert stats[1] == {
        "llm_requests": 2,
        "llm_cache_hits": 2,
        "llm_backend_calls": 0,
        "llm_paid_by_earlier_attempts": 0,
        "llm_prompt_tokens": 0,
        "llm_completion_tokens": 0,
        "llm_cost_usd": 0.0,
    }
    assert stats[0]["llm_completion_tokens"] == sum(c.completion_tokens for c in first) > 0


def test_calls_paid_by_an_earlier_attempt_of_the_run_count_as_paid_not_as_hits(tmp_path):
    cache = ResponseCache(tmp_path)
    killed, resumed, other_run = [], [], []
    CachedClient(WordCounter(), cache, killed.append, payer=Payer("run-1", "evol", "attempt-1")).generate(
        ask("one two", "three"), GREEDY)
    backend = WordCounter()
    CachedClient(backend, cache, resumed.append, payer=Payer("run-1", "evol", "attempt-2")).generate(
        ask("one two", "three", "four five six", "three"), GREEDY)

    assert backend.generated == ["four five six"]
    assert resumed[0]["llm_requests"] == 4
    assert resumed[0]["llm_backend_calls"] == 3  # two paid by the killed attempt, one now
    assert resumed[0]["llm_paid_by_earlier_attempts"] == 2
    assert resumed[0]["llm_cache_hits"] == 0
    assert resumed[0]["llm_prompt_tokens"] == 2 + 1 + 3
    assert json.loads(cache.path(request_key("words", "word-counter", ask("three")[0], GREEDY)).read_text())[
        "paid_by"] == {"run_id": "run-1", "stage": "evol", "attempt": "attempt-1"}

    # Another run, or another stage, paid nothing for these: hits.
    CachedClient(WordCounter(), cache, other_run.append, payer=Payer("run-2", "evol", "attempt-9")).generate(
        ask("one two", "three"), GREEDY)
    assert (other_run[0]["llm_cache_hits"], other_run[0]["llm_backend_calls"]) == (2, 0)


def test_requests_under_their_own_seeds_go_to_the_backend_in_one_call_and_share_the_cache(tmp_path):
    backend = SeedEcho()
    client = CachedClient(backend, ResponseCache(tmp_path))
    a, b = ask("a", "b")
    sampling = SamplingParams(seed=1)
    (alone,) = client.generate([a], sampling.model_copy(update={"seed": 2}))
    got = client.generate_seeded([a, a, b], sampling, [2, 3, 2])
    assert [c.text for c in got] == ["a@2", "a@3", "b@2"] and got[0].cached and alone.text == "a@2"
    assert backend.calls == [([a], None), ([a, b], [3, 2])]
    # The other way round: what the mixed call paid for is found when asked seed by seed.
    assert client.generate([a], sampling.model_copy(update={"seed": 3}))[0].cached


class SeedEcho(Backend):
    """Answers each request with its text and the seed it was sampled with, and records its calls."""

    backend = "seed-echo"

    def __init__(self):
        super().__init__()
        self.calls = []

    @property
    def model_id(self) -> str:
        return "echo"

    def generate(self, requests, sampling, on_completion=None, seeds=None):
        self.calls.append((requests, seeds))
        out = []
        for i, (request, seed) in enumerate(zip(requests, seeds or [sampling.seed] * len(requests))):
            out.append(Completion(f"{request[-1]['content']}@{seed}", 1, 1))
            if on_completion is not None:
                on_completion(i, out[-1])
        return out
