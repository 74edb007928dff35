"""The `local` backend's transformers engine: continuous batching, on CUDA when present, else CPU.

Requests are generated in `spec.batch_size` slots by a small decoding loop of our own rather than
`model.generate`. A slot is refilled from the queue (in request order) as soon as its row finishes
(end of turn, a stop string, `max_tokens`), so a call costs what its live rows cost, never a batch
of one long answer running alone. Each step feeds the next chunk of new rows' prompts
(`PREFILL_CHUNK` tokens per forward, `PREFILL_BUDGET` per step) and then one token of every running
row in one forward. The key/value memory (`SlotCache`) is allocated once per slot count and reused
by every row that takes a slot, and across calls. A prompt is cut into chunks after each end-of-turn
token, after a blank line, and every `PREFILL_CHUNK` tokens between them; the key/values of every
chunk are kept (`PrefixCache`, least recently used first out) by the tokens up to the chunk's end,
so prompts that open alike (a stage's few-shot examples, a template's preamble) feed their shared
turns and paragraphs once and only what differs is fed anew (cut every 128 tokens alone, a
classification prompt left ~112 of its ~490 tokens to feed per request). A prompt asked more than
once in a call (under other seeds, `seeds`) has its last chunk kept too, with the logits it ended
on, so it is fed once: a row waits while an earlier row of the same call feeds it, then copies it.
Other prompts' last chunks are not kept: no other prompt can use them, and they would push shared
chunks out of the cache's budget.

A request's text does not depend on what it was batched with: a prompt is always fed alone and cut
at places its own tokens decide (so a chunk found in the prefix cache, whose key covers every
token up to its end, holds exactly the key/values feeding it would give), each decode row attends
only to its own slot (the mask hides the rest), and each request samples from its own random
generator, seeded from `sampling.seed` and the request's content. The same request gives the same text alone, in any batch, in any process.

On CPU the model runs in float32 (bfloat16 measured twice as slow on CPUs without AVX512-BF16)
with `spec.threads` threads, default: Ray's `OMP_NUM_THREADS` for the worker, else all cores.
For GGUF models on CPU, `engine: auto` picks the llama.cpp engine instead (`synth.llm.engines`).

Token counts are exact: prompt tokens are the templated prompt; completion tokens are the tokens
generated up to the end of the answer (the end-of-turn token itself is not counted) or up to the
token that completed a stop string.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from array import array
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from synth.errors import LLMError
from synth.llm.base import ChatRequest, Completion, SamplingParams, split_prefill
from synth.llm.cache import Backend, OnCompletion
from synth.llm.models import EMBEDDED_NAME, resolve_model_dir
from synth.spec import LLMSpec

log = logging.getLogger(__name__)

TOP_CANDIDATES = 256
"""Sampling looks for the top_p nucleus among this many most likely tokens before sorting all."""
PREFILL_CHUNK = 128
"""Prompt tokens per prefill forward, at most: a long prompt is fed in pieces between decode steps
(a chunk also ends after each end-of-turn token, see `chunk_end`)."""
PARAGRAPH_MIN = 16
"""A blank line ends a prompt chunk only this many tokens or more after the chunk's start: short
forwards feed fewer tokens per second."""
PREFILL_BUDGET = 256
"""Prompt tokens fed per step, at most (whole chunks), so running rows keep decoding."""
PREFIX_CACHE_MB = 256
"""Key/value memory kept for prompt chunks that later prompts may open with."""


@dataclass
class _Row:
    """One request being generated."""

    index: int
    prompt: list[int]
    limit: int
    """Tokens it may generate: `max_tokens`, less where the model's context ends first."""
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    fed: int = 0
    """Prompt tokens already in the key/value memory."""
    prefix_key: bytes = b""
    """`PrefixCache` key of `prompt[:fed]`."""
    repeated: bool = False
    """Whether another request of the call has the same prompt: only then is its last chunk kept."""
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
        self._cache: SlotCache | None = None
        self.prefixes = PrefixCache(PREFIX_CACHE_MB << 20)

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
        self.line_ends, self.blank_line_ends = line_end_tokens(tokenizer)
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
        self.model = self.tokenizer = self._cache = None
        self.prefixes.clear()

    # ------------------------------------------------------------ generation

    def generate(
        self,
        requests: list[ChatRequest],
        sampling: SamplingParams,
        on_completion: OnCompletion | None = None,
        seeds: list[int] | None = None,
    ) -> list[Completion]:
        with self._lock:
            self._load()
            # torch's thread count is per process: set ours for this call only.
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                return self._generate(requests, sampling, on_completion, seeds or [sampling.seed] * len(requests))
            finally:
                torch.set_num_threads(previous)

    def _generate(
        self, requests: list[ChatRequest], sampling: SamplingParams, on_completion: OnCompletion | None,
        seeds: list[int],
    ) -> list[Completion]:  # fmt: skip
        rows = [self._row(i, r, sampling, seed) for i, (r, seed) in enumerate(zip(requests, seeds))]
        results: list[Completion | None] = [None] * len(rows)
        if rows:
            reused_before = self.prefixes.reused_tokens
            self._run(rows, sampling, results, on_completion)
            log.debug("local: %d of %d prompt tokens from the prefix cache",
                      self.prefixes.reused_tokens - reused_before, sum(len(r.prompt) for r in rows))  # fmt: skip
        return results  # type: ignore[return-value]

    def _row(self, index: int, messages: ChatRequest, sampling: SamplingParams, seed: int) -> _Row:
        head, prefill = split_prefill(messages)
        prompt = self.tokenizer.apply_chat_template(head, add_generation_prompt=True, tokenize=False) + prefill
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = sampling.max_tokens
        if self.max_positions:
            if len(ids) >= self.max_positions:
                raise LLMError(
                    f"request {index}: prompt of {len(ids)} tokens does not fit {self.model_id}'s "
                    f"context of {self.max_positions} tokens"
                )
            limit = min(limit, self.max_positions - len(ids))
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(self.device).manual_seed(request_seed(messages, seed))
        return _Row(index, ids, limit, generator)

    @torch.inference_mode()
    def _run(self, rows: list[_Row], sampling: SamplingParams, results: list, on_completion: OnCompletion | None) -> None:
        """Generate every row in `spec.batch_size` slots, refilled in request order as rows finish."""
        n_slots = min(self.spec.batch_size, len(rows))
        prompts = Counter(tuple(row.prompt) for row in rows)
        for row in rows:
            row.repeated = prompts[tuple(row.prompt)] > 1
        cache = self._slot_cache(n_slots, max(len(r.prompt) + r.limit for r in rows) + 1)
        queue, slots = deque(rows), [None] * n_slots

        def finish(slot: int) -> None:
            row = slots[slot]
            results[row.index] = completion = self._completion(row, sampling)
            slots[slot] = None
            if on_completion is not None:
                on_completion(row.index, completion)

        while queue or any(slots):
            for s in range(n_slots):
                if slots[s] is None and queue:
                    slots[s] = queue.popleft()
            self._prefill(slots, cache, sampling, finish)
            self._decode(slots, cache, sampling, finish)
            if not queue:
                self._compact(slots, cache)

    def _slot_cache(self, slots: int, capacity: int) -> SlotCache:
        """The key/value memory for this call: the last call's, when it is big enough."""
        cache = self._cache
        if cache is None or cache.slots != slots or cache.capacity < capacity:
            self._cache = cache = None  # free the old buffers before allocating new ones
            cache = self._cache = SlotCache(self.model.config, slots, capacity)
        return cache

    def _prefill(self, slots: list[_Row | None], cache: SlotCache, sampling: SamplingParams, finish) -> None:
        """Feed new rows' prompts, `PREFILL_CHUNK` tokens per forward, up to `PREFILL_BUDGET` per
        step; a row whose prompt is in samples its first token. A prompt is always cut at the same
        places and fed alone, so its key/values do not depend on the rows beside it. A whole chunk
        the prefix cache holds is copied in instead, and so is a last chunk with its logits."""
        budget = PREFILL_BUDGET
        for s, row in enumerate(slots):
            if row is not None and row.fed == 0 and self._twin_feeding(row, slots):
                continue  # its twin's last chunk will be in the prefix cache
            while row is not None and row.fed < len(row.prompt) and budget > 0:
                end = chunk_end(row.prompt, row.fed, self.eos, self.line_ends, self.blank_line_ends)
                tokens = row.prompt[row.fed : end]
                last = end == len(row.prompt)
                key = self.prefixes.key(row.prefix_key, tokens, last=last)
                found = self.prefixes.get(key) if cache.ready else None
                if found is not None:
                    cache.restore(s, row.fed, found.kv)
                    logits = found.logits
                else:
                    ids = torch.tensor([tokens], device=self.device)
                    positions = torch.arange(row.fed, end, device=self.device)
                    mask = torch.arange(end, device=self.device)[None, :] <= positions[:, None]
                    cache.prefill(s, row.fed, end - row.fed)
                    logits = self._forward(ids, mask[None, None], positions[None], cache)
                    if not last or row.repeated:  # a last chunk serves only the same prompt again
                        self.prefixes.put(key, Chunk(cache.chunk(s, row.fed, end), logits if last else None))
                    budget -= end - row.fed
                row.fed, row.prefix_key = end, key
                if last:
                    token = self._choose(logits, sampling, [row]).item()
                    if self._step(row, token, sampling):
                        finish(s)

    @staticmethod
    def _twin_feeding(row: _Row, slots: list[_Row | None]) -> bool:
        """Whether an earlier request of this call with the same prompt is still feeding it."""
        return any(other is not None and other.index < row.index and other.fed < len(other.prompt)
                   and other.prompt == row.prompt for other in slots)  # fmt: skip

    def _decode(self, slots: list[_Row | None], cache: SlotCache, sampling: SamplingParams, finish) -> None:
        """One token for every row that has one to feed, in one forward over slots 0..last live one;
        the other slots below it ride along on a padding token whose output is ignored."""
        live = [s for s, row in enumerate(slots) if row is not None and row.tokens]
        if not live:
            return
        width = live[-1] + 1
        ids, positions = [self.pad_id] * width, [0] * width
        for s in range(width):
            row = slots[s]
            if row is None:
                continue
            if row.tokens:
                ids[s], positions[s] = row.tokens[-1], len(row.prompt) + len(row.tokens) - 1
            else:  # mid-prefill: its padding key lands where its next chunk will overwrite it
                positions[s] = row.fed
        ids_t = torch.tensor(ids, device=self.device)[:, None]
        pos_t = torch.tensor(positions, device=self.device)
        kv_len = max(positions) + 1
        mask = torch.arange(kv_len, device=self.device)[None, :] <= pos_t[:, None]
        cache.decode(pos_t, kv_len)
        logits = self._forward(ids_t, mask[:, None, None, :], pos_t[:, None], cache)
        index = torch.tensor(live, device=self.device)
        tokens = self._choose(logits[index], sampling, [slots[s] for s in live]).tolist()
        for s, token in zip(live, tokens):
            if self._step(slots[s], token, sampling):
                finish(s)

    @staticmethod
    def _compact(slots: list[_Row | None], cache: SlotCache) -> None:
        """With no request left to start, move the highest rows down into free slots so that
        decode forwards shrink as rows finish."""
        while True:
            free = next((s for s, row in enumerate(slots) if row is None), None)
            last = max((s for s, row in enumerate(slots) if row is not None), default=None)
            if free is None or last is None or free > last:
                return
            row = slots[last]
            cache.move(last, free, len(row.prompt) + len(row.tokens))
            slots[free], slots[last] = row, None

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

    def _step(self, row: _Row, token: int, sampling: SamplingParams) -> bool:
        """Record one token; True when the row is finished."""
        if token in self.eos:
            row.finish = "stop"
            return True
        row.tokens.append(token)
        if sampling.stop and self._stop_index(row.tokens, sampling.stop) is not None:
            row.finish = "stop"
            return True
        return len(row.tokens) >= row.limit

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


class SlotCache(DynamicCache):
    """Key/value memory for `slots` sequences of up to `capacity` tokens, allocated once and reused
    by every request that takes a slot.

    Before each forward the caller says where its keys go: `prefill(slot, start, length)` for a
    chunk of one slot's prompt, or `decode(positions, kv_len)` for one token in each of the first
    `len(positions)` slots, each at its own position. Attention then reads the slots' buffers in
    place (views, no copies); the caller's mask hides what a row must not see.
    """

    def __init__(self, config, slots: int, capacity: int):
        super().__init__(config=config)
        if any(type(layer) is not DynamicLayer for layer in self.layers):
            raise LLMError("the local transformers engine needs a model whose layers all use full attention")
        self.slots, self.capacity = slots, capacity
        self.layers = [SlotLayer(self) for _ in self.layers]
        self.target: tuple = ()

    def prefill(self, slot: int, start: int, length: int) -> None:
        self.target = ("prefill", slot, start, length)

    def decode(self, positions: torch.Tensor, kv_len: int) -> None:
        self.target = ("decode", positions, kv_len)

    def move(self, source: int, dest: int, length: int) -> None:
        """Copy the first `length` keys and values of slot `source` into slot `dest`."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.key_buffer[dest, :, :length] = layer.key_buffer[source, :, :length]
                layer.value_buffer[dest, :, :length] = layer.value_buffer[source, :, :length]

    def chunk(self, slot: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of every layer's keys and values of positions start..end of one slot."""
        return [(layer.key_buffer[slot, :, start:end].clone(), layer.value_buffer[slot, :, start:end].clone())
                for layer in self.layers]  # fmt: skip

    @property
    def ready(self) -> bool:
        """Whether the buffers exist (the first forward allocates them)."""
        return all(layer.is_initialized for layer in self.layers)

    def restore(self, slot: int, start: int, chunk: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put a `chunk()` back at `start` of a slot."""
        for layer, (keys, values) in zip(self.layers, chunk):
            layer.key_buffer[slot, :, start : start + keys.shape[1]] = keys
            layer.value_buffer[slot, :, start : start + values.shape[1]] = values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # every forward passes its positions and a full mask


class SlotLayer(DynamicLayer):
    """One layer of a `SlotCache`: buffers of shape (slots, heads, capacity, head_dim)."""

    def __init__(self, cache: SlotCache):
        super().__init__()
        self.cache = cache

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        cache = self.cache
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            shape = (cache.slots, key_states.shape[1], cache.capacity, key_states.shape[-1])
            # Zeros, not empty: a masked key still enters the product before the mask, and a NaN
            # left in fresh memory would survive it.
            self.key_buffer, self.value_buffer = key_states.new_zeros(shape), value_states.new_zeros(shape)
        if cache.target[0] == "prefill":
            _, slot, start, length = cache.target
            self.key_buffer[slot, :, start : start + length] = key_states[0]
            self.value_buffer[slot, :, start : start + length] = value_states[0]
            end = start + length
            return self.key_buffer[slot : slot + 1, :, :end], self.value_buffer[slot : slot + 1, :, :end]
        _, positions, kv_len = cache.target
        rows = torch.arange(len(positions), device=positions.device)
        self.key_buffer[rows, :, positions] = key_states[:, :, 0]
        self.value_buffer[rows, :, positions] = value_states[:, :, 0]
        return self.key_buffer[: len(rows), :, :kv_len], self.value_buffer[: len(rows), :, :kv_len]


@dataclass
class Chunk:
    """One prompt chunk's key/values in every layer; a prompt's last chunk also keeps the logits
    of its last token, from which the answer's first token is sampled."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        extra = self.logits.nbytes if self.logits is not None else 0
        return extra + sum(k.nbytes + v.nbytes for k, v in self.kv)


class PrefixCache:
    """Key/values of prompt chunks, keyed by a digest of every prompt token up to the chunk's end
    (and, for a prompt's last chunk, that it is the last), within a byte budget; the least recently
    used go first."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._chunks: OrderedDict[bytes, Chunk] = OrderedDict()
        self._bytes = 0
        self.reused_tokens = 0

    @staticmethod
    def key(prefix_key: bytes, tokens: list[int], last: bool = False) -> bytes:
        """The key of a chunk from the key of the tokens before it and its own tokens."""
        tail = b"last" if last else b""
        return hashlib.blake2b(prefix_key + array("q", tokens).tobytes() + tail, digest_size=16).digest()

    def get(self, key: bytes) -> Chunk | None:
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
            self.reused_tokens += chunk.kv[0][0].shape[1]
        return chunk

    def put(self, key: bytes, chunk: Chunk) -> None:
        size = chunk.nbytes
        if key in self._chunks or size > self.budget:
            return
        while self._bytes + size > self.budget:
            _, old = self._chunks.popitem(last=False)
            self._bytes -= old.nbytes
        self._chunks[key] = chunk
        self._bytes += size

    def clear(self) -> None:
        self._chunks.clear()
        self._bytes = 0


def chunk_end(prompt: list[int], start: int, turn_ends: frozenset[int], line_ends: frozenset[int],
              blank_line_ends: frozenset[int]) -> int:  # fmt: skip
    """Where the prompt chunk starting at `start` ends: just after the next end-of-turn token (so a
    few-shot turn shared by many prompts is a chunk of its own, whatever its length), just after a
    blank line at least `PARAGRAPH_MIN` tokens on (a template's preamble, shared, before the text
    that differs), `PREFILL_CHUNK` tokens on, or at the prompt's end, whichever comes first. It
    depends on the prompt's own tokens only: the same opening is always cut alike (both local
    engines cut here, see `synth.llm.llamacpp`)."""
    end = min(start + PREFILL_CHUNK, len(prompt))
    for i in range(start, end):
        if prompt[i] in turn_ends:
            return i + 1
        if i + 1 - start >= PARAGRAPH_MIN and (
            prompt[i] in blank_line_ends or (prompt[i] in line_ends and prompt[i - 1] in line_ends)
        ):
            return i + 1
    return end


def line_end_tokens(tokenizer) -> tuple[frozenset[int], frozenset[int]]:
    """`line_ends_in` the texts of a Hugging Face tokenizer's tokens."""
    return line_ends_in(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def line_ends_in(texts: list[str]) -> tuple[frozenset[int], frozenset[int]]:
    """The tokens (indices into `texts`, each token's text) whose text ends a line, and those that
    end a blank line ("\n\n" is one token or two, as the text around it falls)."""
    ends = frozenset(i for i, text in enumerate(texts) if text.endswith("\n"))
    return ends, frozenset(i for i in ends if texts[i].endswith("\n\n"))


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
