"""Perplexity under a small causal LM: fluent text scores low, word salad high, loops very low.

`perplexity` scores each record's text (see `filters.quality.text` for which columns) with the
local model the `local` LLM backend uses (default: the embedded SmolLM2-135M-Instruct, converted
once; or any Hugging Face causal LM folder in `model`), on CUDA when present, else CPU.
Perplexity is exp(mean negative log-likelihood) over the text's first `max_tokens` tokens, each
token predicted from those before it (the first from the end-of-text token).

Adds `perplexity` (float32; null for blank text) and drops `empty_text`, `perplexity_high`
(above `max_perplexity`) and, when `min_perplexity` is set, `perplexity_low`: a model finds
text that repeats itself very predictable. Measured on SmolLM2-135M: a fluent sentence or two
~15-40 (a five-word sentence ~400: short texts score higher), the same words shuffled
~1,800-9,000, one sentence repeated twenty times ~1.6. Calibrate on a run's histogram
(`OUTPUT/_reports/<stage>/perplexity.png`).
Stateful: each actor loads the model once.
"""

from __future__ import annotations

import math
from typing import Literal

import pyarrow as pa
from pydantic import Field

from filters.quality.text import resolve_columns, texts
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage


class PerplexityConfig(StageConfig):
    kind: Literal["perplexity"] = "perplexity"
    text_columns: list[str] | None = Field(
        None, min_length=1, description="Columns joined into the text scored; default as text_heuristics"
    )
    model: str | None = Field(None, description="A local causal LM folder; default: the embedded SmolLM2")
    max_perplexity: float | None = Field(1000.0, gt=0)
    min_perplexity: float | None = Field(None, gt=0, description="Catches degenerate repetition; off by default")
    max_tokens: int = Field(512, ge=2, description="Tokens scored per text; the rest is ignored")
    model_batch_size: int = Field(16, ge=1, description="Texts per forward pass")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... (default: cuda if present)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: the worker's share)")


@register
class Perplexity(FilterStage):
    kind = "perplexity"
    Config = PerplexityConfig
    description = "Perplexity under a local causal LM (default: the embedded SmolLM2)"
    stateful = True

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from synth.llm.local import default_threads
        from synth.llm.models import resolve_model_dir

        cfg = self.config
        folder = resolve_model_dir(cfg.model)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.set_num_threads(cfg.threads or default_threads())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).to(self.device).eval()
        self.start_id = self.tokenizer.bos_token_id
        if self.start_id is None:
            self.start_id = self.tokenizer.eos_token_id

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        rows = texts(batch, resolve_columns(batch.schema, self.config.text_columns))
        values = self.perplexities(rows)
        reasons = [self._reason(value) for value in values]
        return {"perplexity": pa.array(values, pa.float32())}, reasons

    def perplexities(self, rows: list[str]) -> list[float | None]:
        """One perplexity per text, None for blank ones; texts of similar length share a batch."""
        ids = [self._ids(text) if text.strip() else None for text in rows]
        order = sorted((i for i, x in enumerate(ids) if x), key=lambda i: len(ids[i]))
        out: list[float | None] = [None] * len(rows)
        size = self.config.model_batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for i, value in zip(chunk, self._batch([ids[i] for i in chunk])):
                out[i] = value
        return out

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.config.max_tokens]
        return [self.start_id, *ids]

    def _batch(self, sequences: list[list[int]]) -> list[float]:
        import torch

        width = max(map(len, sequences))
        ids = torch.full((len(sequences), width), self.start_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding: positions stay 0.. for every row
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        target = mask[:, 1:].float()
        mean_nll = (nll * target).sum(1) / target.sum(1)
        return [math.exp(x) for x in mean_nll.tolist()]

    def _reason(self, value: float | None) -> str | None:
        cfg = self.config
        if value is None:
            return "empty_text"
        if cfg.max_perplexity is not None and value > cfg.max_perplexity:
            return "perplexity_high"
        if cfg.min_perplexity is not None and value < cfg.min_perplexity:
            return "perplexity_low"
        return None
