"""The model to train: loaded from a local folder, built from scratch, or wrapped with LoRA; and saved.

- `embedded`: SmolLM2-135M-Instruct, the folder `synth.llm.models` converts from its GGUF once.
- a path: any local Hugging Face causal LM folder.
- `scratch`: a small Llama-style config with random weights, seeded, using the embedded
  model's tokenizer (its chat template included) unless `model.tokenizer` names another.

The saved model is always a plain Hugging Face folder (LoRA adapters merged), with the tokenizer,
so transformers and the `local` LLM backend load it like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from synth.errors import LLMError
from synth.llm.models import resolve_model_dir
from synth.train.spec import EMBEDDED, SCRATCH, ModelSpec, TrainError

log = logging.getLogger(__name__)


def model_folder(base: str) -> Path:
    """The Hugging Face folder behind `model.base` (converting the embedded GGUF on first use)."""
    try:
        return resolve_model_dir(None if base == EMBEDDED else base)
    except LLMError as exc:
        raise TrainError(f"model.base: {exc}") from None


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    folder = spec.tokenizer or (EMBEDDED if spec.base == SCRATCH else spec.base)
    tokenizer = AutoTokenizer.from_pretrained(model_folder(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec, tokenizer, seq_len: int, seed: int) -> torch.nn.Module:
    """The model in float32 on the CPU (the loop moves it), with LoRA applied when asked."""
    from transformers import AutoModelForCausalLM

    if spec.base == SCRATCH:
        model = _scratch(spec, tokenizer, seq_len, seed)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_folder(spec.base), dtype=torch.float32)
    model.config.use_cache = False
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if spec.lora is not None:
        model = _with_lora(model, spec)
    return model


def _scratch(spec: ModelSpec, tokenizer, seq_len: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    s = spec.scratch
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden_size, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate_size,
        max_position_embeddings=max(seq_len, 2048), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _with_lora(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise TrainError("model.lora needs the package `peft`: pip install 'peft>=0.13'") from None
    lora = spec.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainError(f"model.lora.target_modules: {exc}") from None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes: all of them, or only the adapters under LoRA."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state)
    if missing or set(state) - set(params):
        raise TrainError(f"checkpoint does not match the model: missing {missing[:3]}, "
                         f"unexpected {sorted(set(state) - set(params))[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def save_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """A plain Hugging Face folder: LoRA merged, float32 weights, the tokenizer and its chat template."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class CausalLMLoss(torch.nn.Module):
    """Summed next-token cross-entropy over the positions that have a target, and their count.

    Targets come already shifted (`targets[i]` is the token after position `i` in the same
    document, or -100), so packed documents never predict across their boundary. When the
    model's body and output head reproduce its logits (checked once here), the head runs only on
    positions with a target: prompt and padding tokens cost no vocabulary projection. Models that
    rescale logits (softcapping, logit scales) fail that check and get the full forward instead.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        # A tuple, so the parts are not registered twice as submodules.
        self._parts = (inner.get_decoder(), inner.get_output_embeddings())
        self.head_only_on_targets = self._split_matches_full()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor):
        keep = targets != -100
        if self.head_only_on_targets:
            decoder, head = self._parts
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            logits = head(hidden[keep])
        else:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[keep]
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss, keep.sum()

    @torch.no_grad()
    def _split_matches_full(self) -> bool:
        decoder, head = self._parts
        if decoder is None or head is None:
            return False
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        ids = torch.arange(1, 9, device=device).unsqueeze(0)
        positions = torch.arange(8, device=device).unsqueeze(0)
        full = self.model(input_ids=ids, position_ids=positions, use_cache=False).logits
        split = head(decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state)
        self.model.train(was_training)
        return full.shape == split.shape and torch.allclose(full, split, atol=1e-4, rtol=1e-4)
