"""Filter reports end to end: a run's filters leave drops by reason and score histograms in the card,
and `synth inspect` says where they are."""

from __future__ import annotations

import sys
from typing import Literal

import pyarrow as pa
import pytest
import ray.cloudpickle
import stages_for_tests  # noqa: F401 - registers the test stages
import yaml
from typer.testing import CliRunner

import filters.quality.heuristics
import filters.quality.llm_judge
import filters.quality.perplexity  # noqa: F401 - registers perplexity
from synth.cli import app
from synth.registry import register
from synth.runner import run
from synth.run_spec import load_spec
from synth.spec import StageConfig
from synth.stage import TableStage

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TEXTS = [
    "The Danube flows east through ten countries and empties into the Black Sea.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "Boil the water, pour it over the leaves and let the tea steep for three minutes.",
    "",
    "   ",
    "buy now " * 30,
    "- a\n- b\n- c",
]


@register
class Texts(TableStage):
    """The rows of `TEXTS` as `text`, each the answer to one `instruction`."""

    kind = "test_texts"
    source = True

    class Config(StageConfig):
        kind: Literal["test_texts"] = "test_texts"

    def transform(self, table: None) -> pa.Table:
        return pa.table({"instruction": ["Tell me a fact."] * len(TEXTS), "text": TEXTS})


def test_filter_reports_land_in_the_card_and_inspect(ray_session, tmp_path):
    spec = {"name": "texts", "output": str(tmp_path / "out"),
            "stages": [{"kind": "test_texts"}, {"kind": "text_heuristics"}]}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run(load_spec(tmp_path / "spec.yaml"))
    assert result.manifest.drops == {"text_heuristics": {"empty_text": 2, "repeated_2gram": 1, "mean_word_length_low": 1}}

    folder = result.output / "_reports" / "text_heuristics"
    report = (folder / "report.md").read_text()
    assert "kept 3 of 7 records (42.9%)" in report
    assert "| empty_text | 2 | 28.6% |" in report
    assert "| `word_count` | 0 |" in report  # min 0: the blank texts
    assert (folder / "word_count.png").stat().st_size > 1000
    assert (folder / "dup_5gram_char_frac.png").exists()

    card = (result.output / "README.md").read_text()
    assert "### text_heuristics" in card
    assert "![word_count](_reports/text_heuristics/word_count.png)" in card

    shown = CliRunner().invoke(app, ["inspect", str(result.output)])
    assert shown.exit_code == 0, shown.output
    assert "text_heuristics: kept 3 of 7; dropped empty_text: 2, mean_word_length_low: 1, repeated_2gram: 1" in shown.output
    assert f"report: {folder / 'report.md'}" in shown.output
    assert f"histograms in {folder}: " in shown.output and "word_count.png" in shown.output


def test_only_numeric_columns_a_filter_added_are_plotted(ray_session, tmp_path):
    spec = {"name": "numbers", "output": str(tmp_path / "out"),
            "stages": [{"kind": "test_numbers", "count": 30}, {"kind": "test_drop_multiples", "of": 3}]}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run(load_spec(tmp_path / "spec.yaml"))
    folder = result.output / "_reports" / "test_drop_multiples"
    assert sorted(p.name for p in folder.glob("*.png")) == ["n_mod.png"]  # not n or square: the source's
    assert "| multiple_of_3 | 10 | 33.3% |" in (folder / "report.md").read_text()
    assert not (result.output / "_reports" / "test_numbers").exists()


@pytest.mark.slow
def test_model_filters_run_in_actor_pools(ray_session, tmp_path):
    """perplexity and llm_judge load the embedded model once per actor and report like any filter."""
    spec = {
        "name": "texts", "output": str(tmp_path / "out"),
        "llm": {"default": {"backend": "local", "threads": 1, "batch_size": 8}},
        "stages": [
            {"kind": "test_texts"},
            {"kind": "perplexity", "threads": 1, "resources": {"num_cpus": 0.5}},
            {"kind": "llm_judge", "on_unparsed": "keep", "min_score": 1, "sampling": {"max_tokens": 16},
             "resources": {"num_cpus": 0.5}},
        ],
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run(load_spec(tmp_path / "spec.yaml"))
    assert result.manifest.drops["perplexity"]["empty_text"] == 2
    assert result.manifest.records == 5
    assert (result.output / "_reports" / "perplexity" / "perplexity.png").exists()
    assert "| `judge_score` |" in (result.output / "_reports" / "llm_judge" / "report.md").read_text()
    assert result.manifest.llm["llm_requests"] == 5
