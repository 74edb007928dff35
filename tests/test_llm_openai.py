"""The openai backend against a real OpenAI-compatible server (llama.cpp) on loopback.

Normal generation, a server that fails some requests (retries succeed and are counted), and a
server killed mid-run (a clear LLMError, and what finished before it is in the cache).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from llm_fixtures import SERVER_MODEL, FlakyProxy, free_port, llama_server, start_llama_server  # noqa: F401

from synth.errors import LLMError
from synth.llm import SamplingParams, make_client
from synth.llm.openai import OpenAIClient
from synth.spec import LLMSpec

GREEDY = SamplingParams(max_tokens=16, temperature=0, seed=1)


def ask(*questions: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in questions]


def spec(base_url: str, **fields) -> LLMSpec:
    return LLMSpec(backend="openai", model=SERVER_MODEL, base_url=base_url, api_key_env="SYNTH_TEST_NO_KEY", **fields)


@pytest.mark.slow
def test_generates_through_an_openai_compatible_server(llama_server, tmp_path):
    stats = []
    client = make_client(spec(llama_server.base_url), cache_dir=tmp_path, stats=stats.append)
    out = client.generate(ask("What is the capital of France?", "Name a colour."), GREEDY)

    assert all(c.text and c.prompt_tokens > 10 and 0 < c.completion_tokens <= 16 for c in out)
    assert stats[0]["llm_backend_calls"] == 2
    assert stats[0]["llm_completion_tokens"] == sum(c.completion_tokens for c in out)
    assert client.model_id == SERVER_MODEL


@pytest.mark.slow
def test_stop_strings_are_passed_to_the_server(llama_server):
    client = OpenAIClient(spec(llama_server.base_url))
    (free,) = client.generate(ask("List three fruits."), GREEDY)
    stop = free.text.split()[2]
    (stopped,) = client.generate(ask("List three fruits."), GREEDY.model_copy(update={"stop": (stop,)}))
    assert stop not in stopped.text and free.text.startswith(stopped.text.rstrip())


@pytest.mark.slow
def test_a_repeat_penalty_is_sent_only_when_asked_for(llama_server):
    """llama-server's own parameter: sent when set (an OpenAI server would refuse it), and the
    server's answer changes with it."""
    client = OpenAIClient(spec(llama_server.base_url))
    penalised = GREEDY.model_copy(update={"max_tokens": 24, "repeat_penalty": 1.8})
    assert "repeat_penalty" not in client._body(ask("Hi")[0], GREEDY)
    assert client._body(ask("Hi")[0], penalised)["repeat_penalty"] == 1.8
    request = ask("List the numbers from 1 to 10, one per line.")
    (plain,) = client.generate(request, penalised.model_copy(update={"repeat_penalty": 1.0}))
    (other,) = client.generate(request, penalised)
    assert other.text != plain.text, plain.text


@pytest.mark.slow
def test_requests_under_their_own_seeds_in_one_call_send_each_its_seed(llama_server):
    # One request at a time, so the server runs each alone, as when it is asked by itself.
    client = OpenAIClient(spec(llama_server.base_url, max_concurrency=1))
    sampling = SamplingParams(max_tokens=12, temperature=1.0)
    (sea,) = ask("Write one sentence about the sea.")
    alone = [client.generate([sea], sampling.model_copy(update={"seed": s}))[0].text for s in (5, 6)]
    assert alone[0] != alone[1]
    assert [c.text for c in client.generate([sea, sea], sampling, seeds=[5, 6])] == alone


@pytest.mark.slow
def test_generate_works_inside_a_running_event_loop(llama_server):
    client = OpenAIClient(spec(llama_server.base_url))

    async def from_async_code():
        return client.generate(ask("Say hi."), GREEDY.model_copy(update={"max_tokens": 4}))

    (out,) = asyncio.run(from_async_code())
    assert out.completion_tokens > 0


@pytest.mark.slow
def test_failed_requests_are_retried_and_counted(llama_server, tmp_path):
    questions = [f"Give me a word that rhymes with {w}." for w in ("cat", "dog", "sun", "tree", "star", "moon")]
    direct = OpenAIClient(spec(llama_server.base_url)).generate(ask(*questions), GREEDY)

    stats = []
    with FlakyProxy(llama_server.base_url) as proxy:
        client = make_client(
            spec(proxy.base_url, max_concurrency=3, max_retries=3), cache_dir=tmp_path, stats=stats.append
        )
        out = client.generate(ask(*questions), GREEDY)

    assert proxy.failed == 3  # the first attempt of every second distinct request
    assert stats[0]["llm_retries"] == proxy.failed
    assert stats[0]["llm_backend_calls"] == len(questions)
    assert [c.text for c in out] == [c.text for c in direct]


@pytest.mark.slow
def test_a_server_that_dies_gives_a_clear_error_and_keeps_finished_work(llama_server, tmp_path_factory):
    server = start_llama_server(tmp_path_factory.mktemp("doomed"))
    cache_dir = tmp_path_factory.mktemp("cache")
    questions = [f"Write a sentence about the number {n}." for n in range(8)]
    sampling = SamplingParams(max_tokens=48, temperature=0, seed=1)
    client = make_client(spec(server.base_url, max_concurrency=1, max_retries=2), cache_dir=cache_dir)

    def kill_after_two_answers() -> None:
        deadline = time.monotonic() + 120
        while len(list(cache_dir.rglob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop()

    killer = threading.Thread(target=kill_after_two_answers)
    killer.start()
    try:
        with pytest.raises(LLMError) as failure:
            client.generate(ask(*questions), sampling)
    finally:
        killer.join()
        server.stop()

    message = str(failure.value)
    assert server.base_url in message and SERVER_MODEL in message and "\n" not in message
    kept = len(list(cache_dir.rglob("*.json")))
    assert 2 <= kept < len(questions)
    assert f"{kept} of {len(questions)} requests completed" in message

    # Nothing is paid twice: asked again (here of the session's server), the kept ones are hits.
    stats = []
    again = make_client(spec(llama_server.base_url), cache_dir=cache_dir, stats=stats.append)
    out = again.generate(ask(*questions), sampling)
    assert stats[0]["llm_cache_hits"] == kept
    assert stats[0]["llm_backend_calls"] == len(questions) - kept
    assert sum(c.cached for c in out) == kept


def test_an_unreachable_server_names_url_model_and_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = OpenAIClient(spec(url, max_retries=1, timeout_s=5), backoff_s=0.01)
    with pytest.raises(LLMError, match=r"127\.0\.0\.1.*smollm2.*2 attempts.*ConnectError"):
        client.generate(ask("hello"), GREEDY)


def test_the_openai_backend_needs_a_model_name():
    with pytest.raises(LLMError, match="model"):
        OpenAIClient(LLMSpec(backend="openai"))
