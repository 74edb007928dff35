"""The `local` backend's llama.cpp engine: GGUF models on CPU, generated in slots refilled as rows finish.

One llama.cpp context holds `spec.batch_size` sequences (slots). A row that takes a free slot puts
its prompt in, then every step is one `llama_decode` of the next token of each running row, and a
row that finishes (end of turn, a stop string, `max_tokens`) frees its slot for the next request;
once none is left, the last row moves down into it, so a decode step stays one pass over the
weights. The key/value memory is allocated once per context and reused by every row, and across
calls while the context is big enough.

A prompt is cut into chunks where the transformers engine cuts it (`chunk_end`: after each
end-of-turn token, after a blank line, every `PREFILL_CHUNK` tokens). The opening that rows of
one call share (a stage's few-shot turns and template preamble: the chunks two or more of its
prompts open with) is fed once, one chunk per `llama_decode` of its own, and kept in a sequence
after the slots (`PrefixStreams`, `PREFIX_CACHE_MB` of key/values); a later row that opens alike,
in this call or a later one, copies it into its slot. Because such a chunk is always fed alone, on
the same key/values before it, a copied opening holds exactly what feeding it gives. The rest of a
prompt, the row's own, goes in a chunk per step beside the running rows' tokens
(`STEP_PROMPT_TOKENS` a step): a new row costs no pass over the weights of its own.

Each request samples with its own llama.cpp sampler chain seeded from `sampling.seed` and the
request's content (a repeat penalty when asked, temperature, then top-p, then a seeded draw: the
transformers engine's order).
With `sampling.grammar` (GBNF) each request also gets a grammar sampler: the chain draws a token
from the full distribution and the grammar only checks it; when it refuses, the chain draws again
from the tokens the grammar allows (what llama.cpp's own common sampler does, and far cheaper than
matching the grammar against the whole vocabulary at every step).
Slots are filled in request order and the batches depend only on the call's requests and their
tokens (not on what earlier calls kept), so the same requests with the same seed give the same
texts run after run; llama.cpp's kernels do not promise that a row's numbers are independent of
the rows beside it in a decode step (measured: logits differ by up to ~0.5 on Qwen 1.5B), so unlike
the transformers engine a request's text may differ when it is batched with other requests.

Token counts follow the transformers engine: the end-of-turn token is not counted; a stop
string's completing token is.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synth.errors import LLMError
from synth.llm.base import REPEAT_WINDOW, ChatRequest, Completion, SamplingParams, split_prefill
from synth.llm.cache import Backend, OnCompletion
from synth.llm.local import (
    PREFILL_CHUNK, PREFIX_CACHE_MB, PrefixCache, chunk_end, default_threads, line_ends_in, request_seed,
)  # fmt: skip
from synth.llm.prefix_streams import PrefixStreams
from synth.spec import LLMSpec

log = logging.getLogger(__name__)

CONTEXT_STEP = 256
"""Slot contexts grow in steps of this many tokens, so similar calls reuse one context."""

STEP_PROMPT_TOKENS = 2 * PREFILL_CHUNK
"""Prompt tokens a decode step takes beside the running rows' tokens (whole chunks, so at least one)."""


def shared_openings(rows: list[_Row]) -> set[bytes]:
    """The keys of the prompt chunks two or more rows of a call open with (their last chunk aside)."""
    counts: dict[bytes, int] = {}
    for row in rows:
        for key, _ in row.chunks[:-1]:
            counts[key] = counts.get(key, 0) + 1
    return {key for key, n in counts.items() if n > 1}


@dataclass
class _Row:
    index: int
    prompt: list[int]
    limit: int
    sampler: int | None = None
    grammar: int | None = None
    tokens: list[int] = field(default_factory=list)
    finish: str = "length"
    chunks: list[tuple[bytes, int]] = field(default_factory=list)
    """Every prompt chunk's (key, end), in order (`chunk_end` cuts them)."""
    fed: int = 0
    """Prompt tokens in the row's slot so far; the row decodes once all are."""

    @property
    def position(self) -> int:
        """Where the next token goes: after the prompt and every generated token but the last."""
        return len(self.prompt) + len(self.tokens) - 1


class LlamaCppClient(Backend):
    backend = "local-llama.cpp"
    """Part of the cache key: the same model through another engine gives other texts."""
    name = "local"

    def __init__(self, spec: LLMSpec, gguf: Path, model_id: str):
        super().__init__()
        self.spec, self.gguf, self._model_id = spec, Path(gguf), model_id
        self._lock = threading.Lock()
        self.model = self.ctx = None
        self._ctx_shape = (0, 0)
        self._candidate_buffer = None
        """Every token's logit for a grammar-checked draw, allocated once (see `_candidates`)."""
        self.prefixes = PrefixStreams(PREFIX_CACHE_MB << 20)

    @property
    def model_id(self) -> str:
        return self._model_id

    # ------------------------------------------------------------ loading

    def load(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self.model is not None:
            return
        import llama_cpp as lc

        self.lc = lc
        quiet_llama_logs(lc)
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = not advertises_amx()
        model = lc.llama_model_load_from_file(str(self.gguf).encode(), params)
        if not model:
            raise LLMError(f"{self.gguf}: llama.cpp could not load this GGUF file")
        self.model, self.vocab = model, lc.llama_model_get_vocab(model)
        self.n_ctx_train = lc.llama_model_n_ctx_train(model)
        self.threads = self.spec.threads or default_threads()
        self.format_chat = self._chat_formatter()
        n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.turn_ends = frozenset(t for t in range(n_vocab) if lc.llama_vocab_is_eog(self.vocab, t))
        self.line_ends, self.blank_line_ends = line_ends_in([self._piece(t) for t in range(n_vocab)])
        heads = lc.llama_model_n_head(model)
        # f16 keys and values of every layer: the context's default cache type.
        self.kv_bytes_per_token = (2 * 2 * lc.llama_model_n_layer(model) * lc.llama_model_n_head_kv(model)
                                   * lc.llama_model_n_embd(model) // heads)  # fmt: skip

    def _chat_formatter(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._meta("tokenizer.chat_template")
        if not template:
            raise LLMError(f"{self.gguf}: no chat template in the GGUF file; the local backend needs an instruct model")
        lc = self.lc
        text = lambda token: lc.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")  # noqa: E731
        return Jinja2ChatFormatter(template, eos_token=text(lc.llama_vocab_eos(self.vocab)),
                                   bos_token=text(lc.llama_vocab_bos(self.vocab)))  # fmt: skip

    def _piece(self, token: int, size: int = 64) -> str:
        """A token's text (special tokens too)."""
        buf = ctypes.create_string_buffer(size)
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, size, 0, True)
        if n < 0:
            return self._piece(token, -n)
        return buf.raw[:n].decode("utf-8", "replace")

    def _meta(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def _context(self, slots: int, per_slot: int):
        """A context for `slots` sequences of `per_slot` tokens and the prefix streams after them,
        reused while it is big enough (and with it, the prefixes kept)."""
        have_slots, have_per_slot = self._ctx_shape
        if self.ctx is not None and have_slots >= slots and have_per_slot >= per_slot:
            return self.ctx
        lc = self.lc
        if self.ctx is not None:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None
        streams = self.prefixes.count(per_slot * self.kv_bytes_per_token, lc.llama_max_parallel_sequences() - slots)
        params = lc.llama_context_default_params()
        params.n_ctx = (slots + streams) * per_slot
        params.n_seq_max = slots + streams
        params.n_batch = params.n_ubatch = slots + STEP_PROMPT_TOKENS
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False  # each slot attends over its own tokens only
        params.no_perf = True
        ctx = lc.llama_init_from_model(self.model, params)
        if not ctx:
            raise LLMError(f"llama.cpp could not make a context of {slots} x {per_slot} tokens for {self.gguf}")
        self.ctx, self._ctx_shape = ctx, (slots, per_slot)
        self.batch = lc.llama_batch_init(slots + STEP_PROMPT_TOKENS, 0, 1)
        self.prefixes.reset(first_seq=slots, count=streams)
        return ctx

    def close(self) -> None:
        with self._lock:
            lc = getattr(self, "lc", None)
            if self.ctx is not None:
                lc.llama_batch_free(self.batch)
                lc.llama_free(self.ctx)
            if self.model is not None:
                lc.llama_model_free(self.model)
            self.model = self.ctx = None
            self._ctx_shape = (0, 0)
            self.prefixes.reset(0, 0)

    # ------------------------------------------------------------ text <-> tokens

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.lc.llama_token * (len(data) + 8))()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise LLMError(f"llama.cpp could not tokenize a prompt of {len(data)} bytes")
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        if not tokens:
            return ""
        array = (self.lc.llama_token * len(tokens))(*tokens)
        size = 8 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_detokenize(self.vocab, array, len(tokens), buf, size, True, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            size = -n + 1

    def prompt_tokens(self, messages: ChatRequest) -> list[int]:
        head, prefill = split_prefill(messages)
        return self.tokenize(self.format_chat(messages=head).prompt + prefill)

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
            seeds = seeds or [sampling.seed] * len(requests)
            rows = [self._row(i, r, sampling, seed) for i, (r, seed) in enumerate(zip(requests, seeds))]
            results: list[Completion | None] = [None] * len(rows)
            if rows:
                reused_before = self.prefixes.reused_tokens
                self._run(rows, sampling, results, on_completion)
                log.debug("local llama.cpp: %d of %d prompt tokens from the prefix cache",
                          self.prefixes.reused_tokens - reused_before, sum(len(r.prompt) for r in rows))  # fmt: skip
            return results  # type: ignore[return-value]

    def _row(self, index: int, messages: ChatRequest, sampling: SamplingParams, seed: int) -> _Row:
        prompt = self.prompt_tokens(messages)
        if len(prompt) >= self.n_ctx_train:
            raise LLMError(
                f"request {index}: prompt of {len(prompt)} tokens does not fit {self.model_id}'s "
                f"context of {self.n_ctx_train} tokens"
            )
        row = _Row(index, prompt, limit=min(sampling.max_tokens, self.n_ctx_train - len(prompt)))
        row.sampler = self._sampler(sampling, request_seed(messages, seed))
        if sampling.grammar is not None:
            row.grammar = self.lc.llama_sampler_init_grammar(self.vocab, sampling.grammar.encode(), b"root")
            if not row.grammar:
                self._free(row)
                raise LLMError("llama.cpp could not parse the request's GBNF grammar (no `root` rule, or a syntax error)")
        return row

    def _sampler(self, sampling: SamplingParams, seed: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        if sampling.repeat_penalty != 1:  # greedy answers loop; this breaks the loop
            repeats = lc.llama_sampler_init_penalties(n_vocab, REPEAT_WINDOW, sampling.repeat_penalty, 0.0, 0.0)
            lc.llama_sampler_chain_add(chain, repeats)
        if sampling.temperature == 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        if sampling.presence_penalty:  # over the whole context: the paper's penalty on any repeat
            penalties = lc.llama_sampler_init_penalties(n_vocab, -1, 1.0, 0.0, sampling.presence_penalty)
            lc.llama_sampler_chain_add(chain, penalties)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
        if sampling.top_p < 1:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _run(self, rows: list[_Row], sampling: SamplingParams, results: list, on_completion: OnCompletion | None) -> None:
        n_slots = min(self.spec.batch_size, len(rows))
        need = max(len(r.prompt) + r.limit for r in rows) + 1
        per_slot = -(-need // CONTEXT_STEP) * CONTEXT_STEP
        ctx = self._context(n_slots, per_slot)
        for row in rows:
            row.chunks = self._chunks(row.prompt)
        shared = shared_openings(rows)
        queue = deque(rows)
        slots: list[_Row | None] = [None] * n_slots

        def step(s: int, token: int) -> None:
            row = slots[s]
            if self._step(row, token, sampling):
                results[row.index] = completion = self._completion(row, sampling)
                self._free(row)
                slots[s] = None
                if on_completion is not None:
                    on_completion(row.index, completion)

        try:
            while queue or any(slots):
                for s in range(n_slots):
                    if slots[s] is None and queue:
                        slots[s] = queue.popleft()
                        self._put_shared_opening(slots[s], s, ctx, shared)
                self._compact(slots, ctx)
                outputs = self._fill_batch(slots)
                if self.batch.n_tokens:
                    self._decode(ctx)
                for s, index in outputs:
                    step(s, self._sample(slots[s], ctx, index))
        finally:
            for row in rows:
                self._free(row)

    def _chunks(self, prompt: list[int]) -> list[tuple[bytes, int]]:
        chunks, key, start = [], b"", 0
        while start < len(prompt):
            end = chunk_end(prompt, start, self.turn_ends, self.line_ends, self.blank_line_ends)
            key = PrefixCache.key(key, prompt[start:end])
            chunks.append((key, end))
            start = end
        return chunks

    def _compact(self, slots: list[_Row | None], ctx) -> None:
        """Move the last rows down into the free slots below them (free only once the queue is
        empty), so the rows hold slots 0..k-1: with one key/value stream per slot, llama.cpp
        splits a decode batch into one micro-batch per run of consecutive sequence ids, each a pass
        over the weights. A move copies the row's whole stream (at the next decode), which is exact."""
        memory = self.lc.llama_get_memory(ctx)
        for free in [s for s, row in enumerate(slots) if row is None]:
            last = max((s for s, row in enumerate(slots) if row is not None), default=-1)
            if last < free:
                return
            self.lc.llama_memory_seq_cp(memory, last, free, -1, -1)
            self.lc.llama_memory_seq_rm(memory, last, -1, -1)
            slots[free], slots[last] = slots[last], None

    def _put_shared_opening(self, row: _Row, slot: int, ctx, shared: set[bytes]) -> None:
        """Put the part of a row's prompt that other rows of the call open with into its slot, each
        chunk fed alone: the longest opening a prefix stream holds is copied in, the rest fed, and
        the whole shared opening, when new, kept for the rows after. The rest of the prompt goes
        in beside the running rows' tokens (`_fill_batch`)."""
        lc = self.lc
        memory = lc.llama_get_memory(ctx)
        lc.llama_memory_seq_rm(memory, slot, -1, -1)
        opening = [c for c in row.chunks[:-1] if c[0] in shared]  # the last chunk's logits give the first token
        found = self.prefixes.find(opening)
        if found is not None:
            # Across streams llama.cpp copies the whole stream (at the next decode); then drop the
            # source's tokens past the shared opening.
            seq, row.fed = found
            lc.llama_memory_seq_cp(memory, seq, slot, -1, -1)
            lc.llama_memory_seq_rm(memory, slot, row.fed, -1)
        for _, end in opening:
            if end > row.fed:
                self._feed(row.prompt, row.fed, end, slot)
                self._decode(ctx)
                row.fed = end
        if opening and (found is None or found[1] < opening[-1][1]):
            keep = self.prefixes.keep(opening)
            if keep is not None:
                lc.llama_memory_seq_cp(memory, slot, keep, -1, -1)

    def _feed(self, prompt: list[int], start: int, end: int, slot: int) -> None:
        """Make the batch prompt[start:end] of one slot alone."""
        self.batch.n_tokens = 0
        self._add(prompt[start:end], start, slot, logits=False)

    def _add(self, tokens: list[int], position: int, slot: int, logits: bool) -> int:
        """Append tokens of one slot to the batch from `position` on; the batch index of the last."""
        batch, n = self.batch, self.batch.n_tokens
        for i, token in enumerate(tokens, n):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position + i - n, 1
            batch.seq_id[i][0], batch.logits[i] = slot, False
        batch.n_tokens = n + len(tokens)
        batch.logits[batch.n_tokens - 1] = logits
        return batch.n_tokens - 1

    def _decode(self, ctx) -> None:
        if self.lc.llama_decode(ctx, self.batch) != 0:
            raise LLMError(f"llama.cpp failed to decode a batch of {self.batch.n_tokens} tokens")

    def _free(self, row: _Row) -> None:
        for sampler in (row.sampler, row.grammar):
            if sampler:
                self.lc.llama_sampler_free(sampler)
        row.sampler = row.grammar = None

    def _sample(self, row: _Row, ctx, index: int) -> int:
        """The next token of a row: its chain's draw, which its grammar (if any) must allow."""
        lc = self.lc
        if row.grammar is None:
            return lc.llama_sampler_sample(row.sampler, ctx, index)
        candidates = self._candidates(lc.llama_get_logits_ith(ctx, index))
        lc.llama_sampler_apply(row.sampler, ctypes.byref(candidates))
        token = candidates.data[candidates.selected].id
        if not self._grammar_allows(row.grammar, token):
            candidates = self._candidates(lc.llama_get_logits_ith(ctx, index))
            lc.llama_sampler_apply(row.grammar, ctypes.byref(candidates))
            lc.llama_sampler_apply(row.sampler, ctypes.byref(candidates))
            token = candidates.data[candidates.selected].id
        lc.llama_sampler_accept(row.sampler, token)
        lc.llama_sampler_accept(row.grammar, token)
        return token

    def _candidates(self, logits):
        """Every token with its logit, in a buffer reused from step to step."""
        lc = self.lc
        n = lc.llama_vocab_n_tokens(self.vocab)
        if self._candidate_buffer is None:
            self._candidate_buffer = (lc.llama_token_data * n)()
        view = np.frombuffer(self._candidate_buffer, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        view["id"] = np.arange(n, dtype=np.int32)  # again each time: samplers sort the buffer in place
        view["logit"] = np.ctypeslib.as_array(logits, shape=(n,))
        view["p"] = 0.0
        data = ctypes.cast(self._candidate_buffer, ctypes.POINTER(lc.llama_token_data))
        return lc.llama_token_data_array(data, n, -1, False)

    def _grammar_allows(self, grammar, token: int) -> bool:
        one = (self.lc.llama_token_data * 1)(self.lc.llama_token_data(token, 0.0, 0.0))
        candidates = self.lc.llama_token_data_array(one, 1, -1, False)
        self.lc.llama_sampler_apply(grammar, ctypes.byref(candidates))
        return not math.isinf(one[0].logit)

    def _fill_batch(self, slots: list[_Row | None]) -> list[tuple[int, int]]:
        """One step's batch: each running row's last token, and the next chunk of each row still
        taking its prompt in, while they fit in `STEP_PROMPT_TOKENS`; return the (slot, batch
        index) pairs to sample after the decode (a row whose prompt is now all in samples its first token)."""
        self.batch.n_tokens = 0
        outputs, room = [], STEP_PROMPT_TOKENS
        # In slot order: with one key/value stream per slot, llama.cpp splits a batch into
        # micro-batches of consecutive sequence ids (see `_compact`), so any other order costs extra passes.
        for s, row in enumerate(slots):
            if row is None:
                continue
            if row.fed == len(row.prompt):
                outputs.append((s, self._add(row.tokens[-1:], row.position, s, logits=True)))
                continue
            end = next(end for _, end in row.chunks if end > row.fed)
            if end - row.fed > room:
                continue
            room -= end - row.fed
            index = self._add(row.prompt[row.fed : end], row.fed, s, logits=end == len(row.prompt))
            row.fed = end
            if end == len(row.prompt):
                outputs.append((s, index))
        return outputs

    def _step(self, row: _Row, token: int, sampling: SamplingParams) -> bool:
        """Record one token; True when the row is finished."""
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            row.finish = "stop"
            return True
        row.tokens.append(token)
        if sampling.stop and self._stop_index(row.tokens, sampling.stop) is not None:
            row.finish = "stop"
            return True
        return len(row.tokens) >= row.limit

    def _stop_index(self, tokens: list[int], stops: tuple[str, ...]) -> int | None:
        text = self.detokenize(tokens)
        found = [text.find(s) for s in stops if s and s in text]
        return min(found) if found else None

    def _completion(self, row: _Row, sampling: SamplingParams) -> Completion:
        text = self.detokenize(row.tokens)
        cut = self._stop_index(row.tokens, sampling.stop) if sampling.stop else None
        if cut is not None:
            text = text[:cut]
        return Completion(text=text, prompt_tokens=len(row.prompt), completion_tokens=len(row.tokens), finish_reason=row.finish)


def advertises_amx() -> bool:
    """Whether the CPU lists AMX tiles. A native llama.cpp build then computes matrix products with
    them (as a weight-repacking buffer type), and where the kernel or hypervisor has not enabled
    the tile state, as on these VMs, the first product dies of SIGILL. Repacked buffers are
    skipped on such CPUs; the quantised kernels without repacking run everywhere."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


_QUIET = None


def quiet_llama_logs(lc) -> None:
    """Send llama.cpp's own log lines nowhere (it prints every tensor it loads to stderr)."""
    global _QUIET
    if _QUIET is None:
        _QUIET = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_QUIET, ctypes.c_void_p(0))
