"""Training data and specs: chat-template masking, packing with document boundaries, the seeded
split, a stream that resumes exactly, and the errors a user meets first.

`write_instruct_dataset` and `tiny_spec` are shared with the other `test_train_*` files."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from synth.cli import app
from synth.errors import SynthError
from synth.train import TrainError, load_train_spec
from synth.train.data import (
    IGNORE,
    Encoder,
    Packer,
    Prefetcher,
    Source,
    TrainStream,
    parquet_files,
)
from synth.train.model import load_model, load_tokenizer
from synth.train.spec import DataSpec, ModelSpec

TINY_MODEL = {"base": "scratch", "scratch": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                                             "intermediate_size": 128}}


def write_instruct_dataset(folder: Path, rows: int = 60) -> Path:
    """A synth-like output folder (data/part-*.parquet, two files, three row groups) of easy tasks."""
    rng = random.Random(0)
    records = []
    for i in range(rows):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        color = rng.choice(["red", "green", "blue", "yellow", "purple"])
        records.append([
            {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": f"The sum is {a + b}."},
            {"instruction": "Repeat the color in capitals.", "input": color, "output": color.upper()},
            {"instruction": f"Count from 1 to {a % 7 + 2}.", "input": "",
             "output": ", ".join(str(x) for x in range(1, a % 7 + 3))},
        ][i % 3] | {"id": f"row{i:03d}", "kind": "instruct"})
    table = pa.Table.from_pylist(records)
    data = folder / "data"
    data.mkdir(parents=True)
    half = rows // 2 + 5
    pq.write_table(table.slice(0, half), data / "part-00000-00000.parquet", row_group_size=20)
    pq.write_table(table.slice(half), data / "part-00001-00000.parquet")
    return folder


def tiny_spec(data: Path, output: Path, **changes) -> dict:
    """A training spec (as YAML data) for a tiny scratch model that trains in seconds on CPU."""
    spec = {"name": "tiny", "seed": 1, "output": str(output), "model": TINY_MODEL,
            "data": {"path": str(data), "eval_fraction": 0.15},
            "seq_len": 96, "batch_size": 4, "micro_batch_size": 2, "steps": 30, "lr": 3e-3, "warmup_steps": 3,
            "eval_every": 10, "checkpoint_every": 10, "resources": {"threads": 1}}
    return spec | changes


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec(base="scratch"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_instruct_dataset(tmp_path / "instruct")


def source_and_encoder(dataset: Path, tokenizer, seq_len: int = 96, **data):
    spec = DataSpec(path=dataset, **data)
    source = Source(spec, parquet_files(dataset), seed=1)
    return source, Encoder(spec, source, tokenizer, seq_len)


# ---------------------------------------------------------------- encoding and packing


def test_sft_supervises_only_the_response_and_its_end_of_turn(dataset, tokenizer):
    _, encoder = source_and_encoder(dataset, tokenizer)
    row = {"id": "x", "instruction": "Add the two numbers.", "input": "2 and 3", "output": "The sum is 5."}
    ids, targets = encoder.encode(row)

    supervised = [t for t in targets if t != IGNORE]
    assert tokenizer.decode(supervised) == "The sum is 5.<|im_end|>\n"
    prompt = tokenizer.decode(ids[: targets.index(supervised[0]) + 1])
    assert prompt.endswith("<|im_start|>assistant\n") and "Add the two numbers.\n\n2 and 3" in prompt
    assert all(t == IGNORE or t == ids[i + 1] for i, t in enumerate(targets[:-1])) and targets[-1] == IGNORE


def test_packing_keeps_documents_apart(tokenizer):
    """A document packed after another gives the same logits as alone: no attention across the boundary."""
    model = load_model(ModelSpec.model_validate(TINY_MODEL), tokenizer, seq_len=32, seed=0).eval()
    first, second = list(range(100, 111)), list(range(200, 209))
    packer = Packer(seq_len=24, pad_id=0, cut_documents=False)
    packer.add((first, first[1:] + [IGNORE]))
    packer.add((second, second[1:] + [IGNORE]))
    packer.add((list(range(10)), list(range(1, 10)) + [IGNORE]))  # does not fit: starts the next sequence
    sequence = packer.pop()

    assert sequence.position_ids.tolist() == list(range(11)) + list(range(9)) + list(range(4))
    assert sequence.targets[10] == IGNORE and sequence.targets[19:].tolist() == [IGNORE] * 5
    assert sequence.tokens == 20 and len(packer.pending) == 1
    with torch.no_grad():
        packed = model(input_ids=torch.from_numpy(sequence.input_ids)[None],
                       position_ids=torch.from_numpy(sequence.position_ids)[None], use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([second]), use_cache=False).logits[0]
    torch.testing.assert_close(packed[11:20], alone, atol=1e-5, rtol=1e-4)


def test_pretrain_fills_every_sequence_and_cuts_documents(tmp_path, tokenizer):
    docs = [" ".join(f"word{i}" for i in range(n)) for n in (5, 40, 3, 70, 12)]
    folder = tmp_path / "texts"
    folder.mkdir()
    pq.write_table(pa.table({"text": docs}), folder / "part-0.parquet")
    source, encoder = source_and_encoder(folder, tokenizer, seq_len=32, format="pretrain", eval_fraction=0)
    packer = Packer(32, tokenizer.pad_token_id, cut_documents=True)
    stream = iter(TrainStream(source, encoder, packer, seed=1))
    sequences = [next(stream) for _ in range(6)]

    assert all(s.tokens == 32 for s in sequences)  # no padding
    assert sum(s.input_ids.tolist().count(tokenizer.eos_token_id) for s in sequences) >= 4
    assert all(s.position_ids[0] == 0 and (s.targets == IGNORE).sum() <= 3 for s in sequences)
    assert all(s.targets[i] == s.input_ids[i + 1] or s.targets[i] == IGNORE for s in sequences for i in range(31))


def test_split_is_seeded_disjoint_and_the_same_in_every_order(dataset, tokenizer):
    source, _ = source_and_encoder(dataset, tokenizer, eval_fraction=0.3)
    keys = [f"row{i:03d}" for i in range(60)]
    held_out = {k for k in keys if source.is_eval(k)}
    assert 5 < len(held_out) < 35
    assert held_out == {k for k in reversed(keys) if source.is_eval(k)}
    other_seed = Source(source.spec, parquet_files(dataset), seed=2)
    assert held_out != {k for k in keys if other_seed.is_eval(k)}


def test_train_stream_never_yields_eval_rows_and_resumes_from_its_state(dataset, tokenizer):
    source, encoder = source_and_encoder(dataset, tokenizer, eval_fraction=0.15)
    encoded: list[str] = []
    encode = encoder.encode
    encoder.encode = lambda row: encoded.append(row["id"]) or encode(row)
    packer = lambda: Packer(96, tokenizer.pad_token_id, cut_documents=False)
    stream = TrainStream(source, encoder, packer(), seed=1)
    it = iter(stream)
    [next(it) for _ in range(7)]
    state = stream.state()
    rest = [next(it).input_ids.tolist() for _ in range(40)]  # crosses into later epochs

    resumed = iter(TrainStream(source, encoder, packer(), seed=1, state=state))
    assert rest == [next(resumed).input_ids.tolist() for _ in range(40)]
    held_out = {f"row{i:03d}" for i in range(60) if source.is_eval(f"row{i:03d}")}
    first_epoch = encoded[: 60 - len(held_out)]
    assert held_out and not held_out & set(encoded)
    assert sorted(first_epoch) == sorted({f"row{i:03d}" for i in range(60)} - held_out)
    assert first_epoch != sorted(first_epoch)  # shuffled


def test_prefetched_batches_are_the_streams_batches_with_the_state_after_each(dataset, tokenizer):
    source, encoder = source_and_encoder(dataset, tokenizer, eval_fraction=0.15)
    packer = lambda: Packer(96, tokenizer.pad_token_id, cut_documents=False)
    plain = iter(TrainStream(source, encoder, packer(), seed=1))
    expected = [[next(plain).input_ids.tolist() for _ in range(3)] for _ in range(12)]

    with Prefetcher(TrainStream(source, encoder, packer(), seed=1), batch_size=3) as batches:
        got = [batches.next() for _ in range(12)]
    assert [[s.input_ids.tolist() for s in batch] for batch, _ in got] == expected
    # The state handed with batch 5 resumes at batch 6, however far the thread has read ahead.
    resumed = iter(TrainStream(source, encoder, packer(), seed=1, state=got[4][1]))
    assert [next(resumed).input_ids.tolist() for _ in range(3)] == expected[5]


def test_a_prefetch_error_is_raised_in_the_training_thread(dataset, tokenizer):
    source, encoder = source_and_encoder(dataset, tokenizer)
    source.is_eval = lambda key: True  # every row held out: the stream has nothing to train on
    stream = TrainStream(source, encoder, Packer(96, tokenizer.pad_token_id, False), seed=1)
    with Prefetcher(stream, batch_size=2) as batches, pytest.raises(TrainError, match="no rows are left for training"):
        batches.next()


# ---------------------------------------------------------------- errors


def test_a_dataset_without_the_text_column_is_a_clear_error(dataset, tokenizer):
    with pytest.raises(TrainError, match=r"data.text_column: the dataset has no column 'text' \(its columns: "
                                         r"instruction, input, output, id, kind\)"):
        source_and_encoder(dataset, tokenizer, format="pretrain")


def test_an_empty_dataset_is_a_clear_error(tmp_path, tokenizer):
    folder = tmp_path / "empty" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"instruction": pa.array([], pa.string())}), folder / "part-0.parquet")
    with pytest.raises(TrainError, match="has no rows"):
        source_and_encoder(folder.parent, tokenizer)
    with pytest.raises(TrainError, match=r"no \.parquet files in"):
        parquet_files(tmp_path)


def test_a_sequence_length_below_the_prompt_length_is_a_clear_error(dataset, tokenizer):
    _, encoder = source_and_encoder(dataset, tokenizer, seq_len=16)
    with pytest.raises(TrainError, match=r"row row000: its prompt is \d+ tokens, which leaves no room for the "
                                         r"response in seq_len 16"):
        encoder.encode({"id": "row000", "instruction": "Add the two numbers.", "input": "1 and 2", "output": "3"})


def test_spec_errors_name_the_file_line_and_key(tmp_path, dataset):
    spec = tiny_spec(dataset, tmp_path / "out")
    spec["model"] = {"base": str(tmp_path / "no-such-model")}
    path = write_spec(tmp_path / "train.yaml", spec)
    with pytest.raises(SynthError, match=r"train.yaml:\d+: model.base: value error, model folder not found: "):
        load_train_spec(path)

    path = write_spec(tmp_path / "train.yaml", tiny_spec(dataset, tmp_path / "out", batch_size=5))
    with pytest.raises(SynthError, match=r"batch_size \(5\) must be a multiple of micro_batch_size x workers"):
        load_train_spec(path)

    path = write_spec(tmp_path / "train.yaml", tiny_spec(dataset, tmp_path / "out", lerning_rate=1.0))
    with pytest.raises(SynthError, match=r"train.yaml:\d+: lerning_rate: unknown key"):
        load_train_spec(path)


def test_cli_train_reports_a_bad_spec_in_one_line(tmp_path, dataset):
    path = write_spec(tmp_path / "train.yaml", tiny_spec(dataset, tmp_path / "out", steps="many"))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "train.yaml:" in result.output and "steps: input should be a valid integer" in result.output
