"""Exact and MinHash dedup end to end through the runner, and on Ray datasets directly.

Records come from `test_dedup_rows`, a source that serves a Parquet file in several blocks, so
duplicates sit in different blocks and meet only through the shuffle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import ray.data
import yaml

from filters.dedup.exact import ExactDedup
from filters.dedup.minhash import MinhashDedup
from synth.errors import SpecError
from synth.registry import register
from synth.runner import run
from synth.run_spec import load_spec
from synth.spec import StageConfig
from synth.stage import BlockStage, StageContext

# DedupRows' blocks are made in Ray tasks, which cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@register
class DedupRows(BlockStage):
    """The rows of a Parquet file, in `blocks` blocks."""

    kind = "test_dedup_rows"
    source = True

    class Config(StageConfig):
        kind: Literal["test_dedup_rows"] = "test_dedup_rows"
        path: str
        blocks: int = 3

    def plan(self) -> list[dict]:
        rows = pq.read_metadata(self.config.path).num_rows
        step = max(1, -(-rows // self.config.blocks))
        return [{"start": i, "rows": step} for i in range(0, rows, step)]

    def make(self, block: dict) -> pa.Table:
        return pq.read_table(self.config.path).slice(block["start"], block["rows"])


# ---------------------------------------------------------------- corpora


def sentence(rng: np.random.Generator, words: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "re", "tu", "sa", "no", "vi", "de", "pa", "ru", "ze"]
    return ["".join(rng.choice(syllables, size=rng.integers(2, 5))) for _ in range(words)]


def edited(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Substitute round(rate * len) words at random positions."""
    words = list(words)
    for at in rng.choice(len(words), size=max(1, round(rate * len(words))), replace=False):
        words[at] = f"edit{rng.integers(10**6)}"
    return words


def instruct_rows(texts: list[str], **columns) -> list[dict]:
    rows = [{"id": f"r{i:03d}", "instruction": t, "input": "", "output": "ok"} for i, t in enumerate(texts)]
    for name, values in columns.items():
        for row, value in zip(rows, values):
            row[name] = value
    return rows


def groups_with_copies(
    groups: int, copies: int, rate: float, seed: int = 0, words: int = 80
) -> tuple[list[str], list[int]]:
    """Texts of `groups` distinct bases and `copies` edited copies of each, shuffled, and their group."""
    rng = np.random.default_rng(seed)
    texts, group = [], []
    for g in range(groups):
        base = sentence(rng, words)
        texts += [" ".join(base)] + [" ".join(edited(base, rate, rng)) for _ in range(copies)]
        group += [g] * (copies + 1)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [group[i] for i in order]


# ---------------------------------------------------------------- helpers


def run_stages(tmp_path: Path, rows: list[dict], *stages: dict, name: str = "out", **source) -> tuple[pa.Table, dict]:
    """Run the rows through the stages with the runner; the kept rows and the manifest."""
    data = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    spec = {"name": "dedup", "seed": 3, "output": str(tmp_path / name),
            "stages": [{"kind": "test_dedup_rows", "path": str(data), **source}, *stages]}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run(load_spec(path))
    kept = pads.dataset(str(result.output / "data"), format="parquet").to_table()
    return kept, json.loads((result.output / "_manifest.json").read_text())


def apply(stage_cls, records: list[dict], blocks: int = 3, **config) -> list[str | None]:
    """The drop reason of each record after the stage, applied to a Ray dataset directly."""
    table = pa.Table.from_pylist(records)
    step = max(1, -(-len(records) // blocks))
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(records), step)])
    ctx = StageContext("t", "t", 0, stage_cls.kind, 1, Path("/unused"))
    out = stage_cls(stage_cls.Config(**config), ctx).apply(ds)
    return [r["_drop_reason"] for r in out.select_columns(["_drop_reason"]).take_all()]


def kept_per_group(reasons: list[str | None], group: list[int]) -> list[int]:
    return np.bincount(group, weights=[r is None for r in reasons]).astype(int).tolist()


# ---------------------------------------------------------------- exact


def test_exact_keeps_the_preferred_record_of_each_normalised_text(ray_session, tmp_path):
    texts = ["Name three colours.", "name  three COLOURS.", "Name three colours. ", "Name three shapes.",
             "Name three colours!"]  # fmt: skip
    rows = instruct_rows(texts, score=[0.1, 0.9, 0.9, 0.5, 0.2])
    kept, manifest = run_stages(tmp_path, rows, {"kind": "exact_dedup", "prefer_column": "score"})
    # Rows 1 and 2 tie on score: the lower id wins.
    assert kept.column("id").to_pylist() == ["r001", "r003", "r004"]
    assert manifest["drops"] == {"exact_dedup": {"exact_duplicate": 2}}


def test_exact_code_records_ignore_comments_and_spacing(ray_session):
    sources = ["def f(x):\n    return x + 1\n", "def f(x):  # inc\n\n    return x+1\n",
               "def f(x):\n    return '# x + 1'\n", "def f(x):\n    return x + 2\n"]  # fmt: skip
    rows = [{"id": f"c{i}", "code": s} for i, s in enumerate(sources)]
    assert apply(ExactDedup, rows) == [None, "exact_duplicate", None, None]


# ---------------------------------------------------------------- minhash


@pytest.mark.parametrize("partitions", [None, 1, 3])
def test_minhash_keeps_one_record_per_group_of_edited_copies(ray_session, partitions):
    texts, group = groups_with_copies(groups=12, copies=3, rate=0.03)
    rows = instruct_rows(texts)
    reasons = apply(MinhashDedup, rows, blocks=4, partitions=partitions)
    assert kept_per_group(reasons, group) == [1] * 12
    assert set(reasons) == {None, "near_duplicate"}


def test_minhash_default_catches_five_percent_edits_and_keeps_the_preferred(ray_session, tmp_path):
    # 300 words: 15 substituted words leave a 5-gram Jaccard near 0.63, as in the bench.
    texts, group = groups_with_copies(groups=6, copies=2, rate=0.05, seed=1, words=300)
    score = np.random.default_rng(2).random(len(texts)).tolist()
    kept, manifest = run_stages(tmp_path, instruct_rows(texts, score=score),
                                {"kind": "minhash_dedup", "prefer_column": "score"})  # fmt: skip
    best = {g: max(s for s, gg in zip(score, group) if gg == g) for g in set(group)}
    assert sorted(kept.column("score").to_pylist()) == sorted(best.values())
    assert manifest["drops"] == {"minhash_dedup": {"near_duplicate": 12}}
    assert manifest["stages"][1]["counters"]["duplicate_groups"] == 6


def test_minhash_verifies_candidates_before_linking_them(ray_session):
    # One-row bands make every pair sharing a single minimum a candidate; half-overlapping texts
    # (Jaccard near 0.33) must still stay apart at threshold 0.5 and meet at 0.2.
    rng = np.random.default_rng(5)
    shared = sentence(rng, 60)
    rows = instruct_rows([" ".join(shared + sentence(rng, 60)) for _ in range(4)])
    assert apply(MinhashDedup, rows, bands=64, rows=1, threshold=0.5) == [None] * 4
    assert apply(MinhashDedup, rows, bands=64, rows=1, threshold=0.2).count(None) == 1


# ---------------------------------------------------------------- both


def test_a_corpus_without_duplicates_loses_nothing(ray_session, tmp_path):
    rng = np.random.default_rng(7)
    texts = [" ".join(sentence(rng, int(rng.integers(5, 60)))) for _ in range(150)]
    kept, manifest = run_stages(tmp_path, instruct_rows(texts), {"kind": "exact_dedup"}, {"kind": "minhash_dedup"})
    assert kept.num_rows == 150
    assert manifest["drops"] == {}


@pytest.mark.parametrize("stage", [ExactDedup, MinhashDedup])
def test_all_identical_records_keep_exactly_one(ray_session, stage):
    rows = instruct_rows(["Write a haiku about rain."] * 60, score=[1.0] * 30 + [2.0] + [1.0] * 29)
    reasons = apply(stage, rows, blocks=4, prefer_column="score")
    assert [i for i, r in enumerate(reasons) if r is None] == [30]


@pytest.mark.parametrize(("stage", "reason"), [(ExactDedup, "exact_duplicate"), (MinhashDedup, "near_duplicate")])
def test_empty_and_whitespace_only_texts_are_one_text(ray_session, stage, reason):
    rows = [{"id": str(i), "text": t} for i, t in enumerate(["", "   ", "\n\t ", None, "not empty at all"])]
    assert apply(stage, rows) == [None, reason, reason, reason, None]


def test_very_long_documents(ray_session):
    rng = np.random.default_rng(11)
    long_a, long_b = sentence(rng, 60_000), sentence(rng, 60_000)
    texts = [" ".join(long_a), " ".join(long_b), " ".join(edited(long_a, 0.05, rng)), " ".join(long_a[:100])]
    rows = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    assert apply(MinhashDedup, rows) == [None, None, "near_duplicate", None]
    assert apply(ExactDedup, rows) == [None] * 4


SCRIPTS = {
    "cyrillic": ("абвгдеёжзийклмнопрстуфхцчшщыэюя", True),
    "greek": ("αβγδεζηθικλμνξοπρστυφχψω", True),
    "arabic": ("ابتثجحخدذرزسشصضطظعغفقكلمنهوي", True),
    "devanagari": ("कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह", True),
    "han": ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年", False),
    "kana": ("あいうえおかきくけこさしすせそたちつてとなにぬねのアイウエオカキクケコ", False),
    "thai": ("กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮ", False),
}


def script_text(letters: str, spaced: bool, rng: np.random.Generator, length: int = 120) -> list[str]:
    """Words of random letters (spaced scripts) or a run of characters (unspaced ones)."""
    if spaced:
        return ["".join(rng.choice(list(letters), size=rng.integers(2, 7))) for _ in range(length)]
    return list(rng.choice(list(letters), size=length * 2))


def test_non_latin_scripts(ray_session):
    rng = np.random.default_rng(13)
    texts, group = [], []
    for g, (letters, spaced) in enumerate(SCRIPTS.values()):
        base = script_text(letters, spaced, rng)
        copy = list(base)
        for at in rng.choice(len(copy), size=len(copy) // 50, replace=False):
            copy[at] = letters[0] * 3
        other = script_text(letters, spaced, rng)
        sep = " " if spaced else ""
        texts += [sep.join(base), sep.join(copy), sep.join(other)]
        group += [2 * g, 2 * g, 2 * g + 1]
    reasons = apply(MinhashDedup, [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    assert kept_per_group(reasons, group) == [1] * (2 * len(SCRIPTS))


# ---------------------------------------------------------------- against earlier outputs


@pytest.fixture(scope="module")
def earlier_output(ray_session, tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """A finished synth output holding three bases, and six bases (the three, then three new)."""
    rng = np.random.default_rng(17)
    bases = [sentence(rng, 80) for _ in range(6)]
    tmp = tmp_path_factory.mktemp("earlier")
    run_stages(tmp, instruct_rows([" ".join(b) for b in bases[:3]]), name="first")
    return tmp / "first", bases


@pytest.mark.parametrize(("stage", "edit_rate"), [(ExactDedup, 0.0), (MinhashDedup, 0.02)])
def test_new_records_duplicating_an_earlier_output_are_dropped(earlier_output, stage, edit_rate):
    folder, bases = earlier_output
    rng = np.random.default_rng(19)
    # The first old base twice, the other two once (verbatim or edited), then the three new bases.
    again = [edited(b, edit_rate, rng) if edit_rate else b for b in [bases[0], *bases[:3]]]
    rows = instruct_rows([" ".join(b) for b in again + bases[3:]])
    reasons = apply(stage, rows, against=[folder])
    assert reasons == ["duplicate_of_existing"] * 4 + [None] * 3


# ---------------------------------------------------------------- errors


def test_config_errors_name_what_was_expected(ray_session, tmp_path):
    rows = instruct_rows(["a b c"])
    with pytest.raises(ValueError, match="text_columns: column 'question' is not in the data"):
        apply(MinhashDedup, rows, text_columns=["question"])
    with pytest.raises(ValueError, match="prefer_column: column 'id' is string, expected a numeric column"):
        apply(ExactDedup, rows, prefer_column="id")
    with pytest.raises(SpecError, match=r"stages\[1\].against\[0\]: .*not found: .*nowhere \(expected an earlier"):
        run_stages(tmp_path, rows, {"kind": "exact_dedup", "against": ["nowhere"]})
