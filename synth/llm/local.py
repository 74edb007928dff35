"""The `local` backend: batched generation with transformers, on CUDA when present, else CPU.

Requests are sorted by prompt length and generated `spec.batch_size` at a time, left padded, by a
small decoding loop of our own rather than `model.generate`, for two reasons:

- rows leave the batch as soon as they finish (end of turn, a stop string, `max_tokens`), so a
  batch costs what its live rows cost, not what its longest answer costs;
- each request samples from its own random generator, seeded from `sampling.seed` and the
  request's content, so a request's text does not depend on what it was batched with: the same
  request gives the same text alone, in any batch, in any process.

On CPU the model runs in float32 (bfloat16 measured twice as slow on CPUs without AVX512-BF16)
with `spec.threads` threads, default: Ray's `OMP_NUM_THREADS` for the worker, else all cores.

Token counts are exact: prompt tokens are the templated prompt without padding; completion tokens
are the tokens generated up to the end of the answer (the end-of-turn token itself is not
counted) or up to the token that completed a stop string.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from synth.errors import LLMError
from synth.llm.base import ChatRequest, Completion, SamplingParams
from synth.llm.cache import Backend, OnCompletion
from synth.llm.models import EMBEDDED_NAME, resolve_model_dir
from synth.spec import LLMSpec

log = logging.getLogger(__name__)

TOP_CANDIDATES = 256
"""Sampling looks for the top_p nucleus among this many most likely tokens before sorting all."""


@dataclass
class _Row:
    """One request being generated."""

    index: int
    prompt: list[int]
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    finish: str = "length"


class LocalClient(Backend):
    backend = "local"
    name = "local"

    def __init__(self, spec: LLMSpec):
        super().__init__()
        self.spec = spec
        self._model_id = spec.model or EMBEDDED_NAME
        self._lock = threading.Lock()  # one load, and one generate at a time, per client
        self.model = None
        self.tokenizer = None

    @property
    def model_id(self) -> str:
        return self._model_id

    # ------------------------------------------------------------ loading

    def load(self) -> None:
        """Load the model now (otherwise the first generate does, so cache hits never load it)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = resolve_model_dir(self.spec.model)
        self.device = torch.device(self.spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.threads = self.spec.threads or default_threads()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if not tokenizer.chat_template:
            raise LLMError(f"{folder}: the tokenizer has no chat template; the local backend needs an instruct model")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=self._dtype()).to(self.device).eval()
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise LLMError(f"{folder}: no end-of-sequence token in its tokenizer or generation_config.json")
        self.eos = frozenset(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        # transformers 5.x renamed `past_key_values` to `cache`; 4.x only knows the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.tokenizer, self.model = tokenizer, model

    def _dtype(self) -> torch.dtype:
        # float32 on CPU: without AVX512-BF16/AMX, bfloat16 matmuls are slower, not faster.
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    def close(self) -> None:
        self.model = self.tokenizer = None

    # ------------------------------------------------------------ generation

    def generate(
        self,
        requests: list[ChatRequest],
        sampling: SamplingParams,
        on_completion: OnCompletion | None = None,
    ) -> list[Completion]:
        with self._lock:
            self._load()
            # torch's thread count is per process: set ours for this call only.
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                return self._generate(requests, sampling, on_completion)
            finally:
                torch.set_num_threads(previous)

    def _generate(
        self, requests: list[ChatRequest], sampling: SamplingParams, on_completion: OnCompletion | None
    ) -> list[Completion]:
        rows = [self._row(i, r, sampling) for i, r in enumerate(requests)]
        results: list[Completion | None] = [None] * len(rows)
        rows.sort(key=lambda r: len(r.prompt))
        size = self.spec.batch_size
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            self._generate_batch(batch, sampling)
            for row in batch:
                results[row.index] = completion = self._completion(row, sampling)
                if on_completion is not None:
                    on_completion(row.index, completion)
        return results  # type: ignore[return-value]

    def _row(self, index: int, messages: ChatRequest, sampling: SamplingParams) -> _Row:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if self.max_positions and len(ids) >= self.max_positions:
            raise LLMError(
                f"request {index}: prompt of {len(ids)} tokens does not fit {self.model_id}'s "
                f"context of {self.max_positions} tokens"
            )
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(self.device).manual_seed(request_seed(messages, sampling.seed))
        return _Row(index, ids, generator)

    @torch.inference_mode()
    def _generate_batch(self, rows: list[_Row], sampling: SamplingParams) -> None:
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
            mask[i, width - len(row.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        limit = sampling.max_tokens
        if self.max_positions:
            limit = min(limit, self.max_positions - width)
        cache = kv_cache(self.model.config, capacity=width + limit)
        live = list(rows)
        logits = self._forward(ids, mask, positions, cache)
        next_pos = positions[:, -1:] + 1
        for _ in range(limit):
            chosen = self._choose(logits, sampling, live)
            tokens = chosen.tolist()
            keep = [i for i, row in enumerate(live) if not self._step(row, tokens[i], sampling, limit)]
            if not keep:
                break
            if len(keep) < len(live):
                # Finished rows leave the batch: the next steps compute only live ones.
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                chosen, mask, next_pos = chosen[index], mask[index], next_pos[index]
                live = [live[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            logits = self._forward(chosen[:, None], mask, next_pos, cache)
            next_pos = next_pos + 1

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return out.logits[:, -1].float()

    def _step(self, row: _Row, token: int, sampling: SamplingParams, limit: int) -> bool:
        """Record one token; True when the row is finished."""
        if token in self.eos:
            row.finish = "stop"
            return True
        row.tokens.append(token)
        if sampling.stop and self._stop_index(row.tokens, sampling.stop) is not None:
            row.finish = "stop"
            return True
        return len(row.tokens) >= limit

    def _stop_index(self, tokens: list[int], stops: tuple[str, ...]) -> int | None:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        found = [text.find(s) for s in stops if s and s in text]
        return min(found) if found else None

    @staticmethod
    def _choose(logits: torch.Tensor, sampling: SamplingParams, rows: list[_Row]) -> torch.Tensor:
        if sampling.temperature == 0:
            return logits.argmax(-1)
        probs = (logits / sampling.temperature).softmax(-1)
        # Each row draws from its own generator, so its text does not depend on its batch.
        if sampling.top_p >= 1:
            return torch.cat([torch.multinomial(probs[i], 1, generator=r.generator) for i, r in enumerate(rows)])
        # The nucleus is almost always among the few most likely tokens: look there first and
        # sort the whole vocabulary only for rows whose top candidates fall short of top_p.
        top, index = probs.topk(min(TOP_CANDIDATES, probs.shape[-1]))
        short = (top.sum(-1) < sampling.top_p).tolist()
        chosen = []
        for i, row in enumerate(rows):
            p, ids = probs[i].sort(descending=True) if short[i] else (top[i], index[i])
            # Drop a token once the ones before it reach top_p; the first always stays.
            p = p.masked_fill((p.cumsum(0) - p) >= sampling.top_p, 0)
            chosen.append(ids[torch.multinomial(p, 1, generator=row.generator)])
        return torch.cat(chosen)

    def _completion(self, row: _Row, sampling: SamplingParams) -> Completion:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = self._stop_index(row.tokens, sampling.stop) if sampling.stop else None
        if cut is not None:
            text = text[:cut]
        return Completion(text=text, prompt_tokens=len(row.prompt), completion_tokens=len(row.tokens), finish_reason=row.finish)


def kv_cache(config, capacity: int) -> DynamicCache:
    """A key/value cache whose full-attention layers are preallocated for `capacity` tokens.

    transformers' `DynamicCache` concatenates every step, copying the whole cache for each token;
    on CPU that took a tenth of the time. Layers of other kinds (sliding windows...) stay as they are.
    """
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` that writes into buffers allocated once and exposes the filled part as views."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            batch_heads, size = key_states.shape[:2], max(self.capacity, key_states.shape[-2])
            self.key_buffer = key_states.new_empty((*batch_heads, size, key_states.shape[-1]))
            self.value_buffer = value_states.new_empty((*batch_heads, size, value_states.shape[-1]))
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"key/value cache of {self.key_buffer.shape[-2]} tokens is full")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self.keys = self.key_buffer[:, :, : self.length]
            self.values = self.value_buffer[:, :, : self.length]


def default_threads() -> int:
    """CPU threads when the spec names none: Ray's per-worker `OMP_NUM_THREADS` when set (so
    actors sharing a machine don't oversubscribe it; spinning threads stall badly there),
    else every core this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def request_seed(messages: ChatRequest, seed: int) -> int:
    """A 63-bit seed from the sampling seed and the request's content."""
    text = json.dumps([seed, messages], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
