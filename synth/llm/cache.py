"""The request cache and token / cost accounting that wrap every LLM backend the same way.

A request's key is the sha256 of (backend, model id, messages, sampling params with the seed):
the same request asked again, by a resumed run or another Ray worker, is answered from disk and
costs nothing. Each completion is stored as its own JSON file, `cache_dir/<key[:2]>/<key>.json`,
written to a temporary file and renamed into place, so any number of processes can share the
folder without locks and a reader never sees half a file.

Backends hand each completion to the cache as soon as it exists (`on_completion`), so a call that
fails half way still keeps everything finished before the failure.

Identical requests within one call are generated once: a request's key decides its completion,
so vary the prompt or the seed when you want different answers.

An entry records who paid for it (`paid_by`: run id, stage, attempt). A resumed run (a new
attempt of the same run) that finds an entry an earlier attempt of the same stage paid for counts
it as paid, tokens and cost included, not as a cache hit: the manifest then reports what the run
cost in all, whichever attempt paid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from synth.llm.base import ChatRequest, Completion, LLMClient, SamplingParams, require_one_seed_each
from synth.spec import LLMPrices

OnCompletion = Callable[[int, Completion], None]
"""Called with (index into the requests, completion) as soon as a completion is ready."""

StatsSink = Callable[[dict[str, float]], None]

log = logging.getLogger(__name__)


class Backend(LLMClient):
    """An LLM backend that reports each completion as it finishes and keeps its own counters."""

    backend: str = "backend"
    """The backend kind (`local`, `openai`): part of the cache key."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        """Backend-specific counters (retries...) added since the last `take_counters()`."""

    def take_counters(self) -> dict[str, float]:
        out, self.counters = self.counters, {}
        return out

    def count(self, name: str, value: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    @abstractmethod
    def generate(
        self,
        requests: list[ChatRequest],
        sampling: SamplingParams,
        on_completion: OnCompletion | None = None,
        seeds: list[int] | None = None,
    ) -> list[Completion]:
        """One completion per request; with `seeds`, request i is sampled with `seeds[i]` in place
        of `sampling.seed` (and gives the text it gives alone with that seed)."""


def request_key(backend: str, model_id: str, messages: ChatRequest, sampling: SamplingParams) -> str:
    """The cache key of one request: stable across processes, machines and Python versions."""
    payload = {
        "backend": backend,
        "model": model_id,
        "messages": [dict(m) for m in messages],
        # fields at their default left out: the key a request had before they existed stays valid
        "sampling": sampling.model_dump(mode="json", exclude=_unset_fields(sampling)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _unset_fields(sampling: SamplingParams) -> set[str]:
    return {name for name, off in (("grammar", None), ("repeat_penalty", 1.0)) if getattr(sampling, name) == off}


@dataclass(frozen=True)
class Payer:
    """Who paid for a completion: one attempt (one `synth generate`) of one stage of one run."""

    run_id: str
    stage: str
    attempt: str

    def paid_earlier(self, other: dict | None) -> bool:
        """`other` (an entry's `paid_by`) is an earlier attempt of this very run and stage."""
        return (other is not None and other.get("run_id") == self.run_id and other.get("stage") == self.stage
                and other.get("attempt") != self.attempt)


class ResponseCache:
    """One JSON file per completion under `root/<key[:2]>/<key>.json`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        entry = self.lookup(key)
        return None if entry is None else entry[0]

    def lookup(self, key: str) -> tuple[Completion, dict | None] | None:
        """The cached completion and who paid for it (None for entries that do not say)."""
        try:
            data = json.loads(self.path(key).read_text())
            return Completion(**data["completion"], cached=True), data.get("paid_by")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged entry is regenerated and overwritten, not fatal.
            log.warning("ignoring unreadable LLM cache entry %s: %s", self.path(key), exc)
            return None

    def put(self, key: str, completion: Completion, request: dict, paid_by: Payer | None = None) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = asdict(completion)
        entry.pop("cached")
        record = {"key": key, "request": request, "completion": entry}
        if paid_by is not None:
            record["paid_by"] = asdict(paid_by)
        text = json.dumps(record, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it private; workers of other users may share the cache
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class CachedClient(LLMClient):
    """Wraps a backend: answers repeats from the cache (if any) and reports counters to `stats`.

    Counters (deltas, reported once per `generate` call, also when it fails): `llm_requests`,
    `llm_cache_hits`, `llm_backend_calls` (completions actually generated), `llm_prompt_tokens`,
    `llm_completion_tokens` and `llm_cost_usd` (for generated completions; cache hits cost
    nothing), plus whatever the backend counts itself (`llm_retries`).

    With a `payer`, each entry written records it, and a hit on an entry an earlier attempt of
    the same run and stage paid for counts as paid (in `llm_backend_calls`, the tokens and the
    cost, and in `llm_paid_by_earlier_attempts`), not as a cache hit.
    """

    def __init__(
        self,
        backend: Backend,
        cache: ResponseCache | None = None,
        stats: StatsSink | None = None,
        prices: LLMPrices | None = None,
        payer: Payer | None = None,
    ):
        self.backend = backend
        self.cache = cache
        self.stats = stats
        self.prices = prices or LLMPrices()
        self.payer = payer
        self.name = backend.name

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def generate(self, requests: list[ChatRequest], sampling: SamplingParams) -> list[Completion]:
        return self.generate_seeded(requests, sampling, [sampling.seed] * len(requests))

    def generate_seeded(self, requests: list[ChatRequest], sampling: SamplingParams, seeds: list[int]) -> list[Completion]:
        """Every request in one backend call, each under its own seed; a request's key is the one
        it has asked alone with its seed, so either way of asking finds the other's entries."""
        require_one_seed_each(requests, seeds)
        params = {seed: sampling.model_copy(update={"seed": seed}) for seed in dict.fromkeys(seeds)}
        keys = [request_key(self.backend.backend, self.model_id, r, params[s]) for r, s in zip(requests, seeds)]
        results: dict[str, Completion] = {}
        paid_earlier: set[str] = set()
        if self.cache is not None:
            for key in dict.fromkeys(keys):
                entry = self.cache.lookup(key)
                if entry is not None:
                    results[key] = entry[0]
                    if self.payer is not None and self.payer.paid_earlier(entry[1]):
                        paid_earlier.add(key)
        hits = sum(1 for k in keys if k in results and k not in paid_earlier)
        # One backend request per distinct missing key, in first-seen order.
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        todo = [k for k in first if k not in results]
        todo_requests = [requests[first[k]] for k in todo]
        todo_seeds = [seeds[first[k]] for k in todo]
        generated: list[Completion] = []

        def on_completion(i: int, completion: Completion) -> None:
            results[todo[i]] = completion
            generated.append(completion)
            if self.cache is not None:
                request = {"messages": todo_requests[i], "sampling": params[todo_seeds[i]].model_dump(mode="json")}
                self.cache.put(todo[i], completion, request, paid_by=self.payer)

        try:
            if len(set(todo_seeds)) == 1:
                self.backend.generate(todo_requests, params[todo_seeds[0]], on_completion=on_completion)
            elif todo:
                self.backend.generate(todo_requests, sampling, on_completion=on_completion, seeds=todo_seeds)
        finally:
            # Counted per distinct key, as the backend was (repeats within a call are hits).
            earlier = [results[k] for k in first if k in paid_earlier]
            self._report(len(requests), hits, generated, earlier)
        return [results[k] for k in keys]

    def _report(self, n_requests: int, hits: int, generated: list[Completion], paid_earlier: list[Completion]) -> None:
        paid = generated + paid_earlier
        prompt = sum(c.prompt_tokens for c in paid)
        completion = sum(c.completion_tokens for c in paid)
        counters = {
            "llm_requests": n_requests,
            "llm_cache_hits": hits,
            "llm_backend_calls": len(paid),
            "llm_paid_by_earlier_attempts": len(paid_earlier),
            "llm_prompt_tokens": prompt,
            "llm_completion_tokens": completion,
            "llm_cost_usd": (
                prompt * self.prices.prompt_per_million + completion * self.prices.completion_per_million
            )
            / 1e6,
        }
        counters.update(self.backend.take_counters())
        if self.stats is not None:
            self.stats(counters)

    def close(self) -> None:
        self.backend.close()
