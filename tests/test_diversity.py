"""Diversity of instruction data: the measures on known cases, and their place in the card and `synth inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from generators.instruct.diversity import diversity
from synth.card import write_card
from synth.manifest import Manifest
from synth.cli import app

SEED_FILE = Path(__file__).parents[1] / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"


def test_identical_instructions_are_all_near_duplicates():
    m = diversity(["Name three rivers in Europe."] * 4)
    assert m["mean_pairwise_rouge_l"] == 1.0 and m["near_duplicate_share"] == 1.0
    assert m["close_to_seed_share"] is None and m["measured"] == 4


def test_unrelated_instructions_score_low_and_seed_copies_are_counted():
    texts = ["Name three rivers in Europe.", "Write a haiku about snow.", "Sort 5, 2, 9.",
             "Explain photosynthesis to a child.", "Name three rivers in Africa."]  # fmt: skip
    m = diversity(texts, seeds=["Name three rivers in Asia.", "Translate 'cat' into French."])
    # one pair of the 10 shares 4 of 5 tokens (F 0.8); the rest share at most "a"/"in"
    assert 0.05 < m["mean_pairwise_rouge_l"] < 0.2
    assert m["near_duplicate_share"] == 0.4  # the two river questions
    assert m["close_to_seed_share"] == 0.4  # ...which are also near the Asian one
    assert m["seed_tasks"] == 2


def test_a_large_dataset_is_measured_on_a_seeded_sample():
    texts = [f"Describe item {i} of the catalogue in detail." for i in range(50)]
    first, again = diversity(texts, max_records=20, seed=1), diversity(texts, max_records=20, seed=1)
    assert first == again and first["measured"] == 20 and first["records"] == 50


def tiny_manifest(schema: dict[str, str], spec: dict) -> Manifest:
    return Manifest(
        name="tiny", run_id="r1", seed=0, records=5, schema=schema, files=[], stages=[], drops={}, llm={},
        spec=spec, spec_file=None, spec_fingerprint="f", inputs={}, versions={}, git_revision=None,
        ray="embedded", started_at="", finished_at="",
    )  # fmt: skip


def test_card_and_inspect_show_the_diversity_of_an_instruction_dataset(tmp_path):
    seeds = [json.loads(line)["instruction"] for line in SEED_FILE.read_text().splitlines()]
    instructions = seeds[:3] + ["Write a limerick about a sleepy cat.", "Convert 30 km to miles."]
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"instruction": instructions, "output": ["x"] * 5}), out / "data" / "part-00000.parquet")
    manifest = tiny_manifest(
        {"instruction": "string", "output": "string"},
        {"stages": [{"kind": "self_instruct", "seed_tasks": str(SEED_FILE)}]},
    )
    (out / "_manifest.json").write_text(json.dumps(manifest.to_json()))
    write_card(out, manifest)

    card = (out / "README.md").read_text()
    assert "### diversity" in card and "| mean pairwise ROUGE-L F |" in card
    assert f"| instructions within ROUGE-L 0.5 of a seed task ({len(seeds)} seeds) | 60.0% |" in card
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "diversity of 5 of 5 instructions: mean pairwise ROUGE-L" in shown.output
    assert "close to a seed 0.6" in shown.output


def test_other_datasets_get_no_diversity_report(tmp_path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a"]}), out / "data" / "part-00000.parquet")
    write_card(out, tiny_manifest({"text": "string"}, {}))
    assert not (out / "_reports").exists() and "diversity" not in (out / "README.md").read_text()
