"""Training data: a Parquet dataset streamed as packed, fixed-length token sequences.

From rows to batches, one row group at a time (never the whole dataset in memory):

1. **Source**: the Parquet files of a synth output (`OUTPUT/data/`) or any Parquet folder, cut
   into blocks (row groups). Each epoch visits the blocks, and the rows inside each, in an order
   drawn from the seed and the epoch.
2. **Split**: a row is held out for eval when the hash of its `id` (or its place, without one)
   and the seed falls under `eval_fraction`: the same rows for any order, worker count or resume.
3. **Encoder**: `sft` renders the chat template (system, user = prompt columns, assistant =
   response) and supervises only the response tokens; `pretrain` supervises every token of a
   text column, an end-of-sequence token closing each document.
4. **Packer**: documents are concatenated into sequences of exactly `seq_len` tokens. Targets are
   shifted per document (`targets[i]` is the next token of the same document, else -100), and
   position ids restart at every document, which transformers turns into a block-diagonal causal
   mask: a document never attends to, nor predicts, its neighbour. `sft` documents are never cut
   (one that does not fit starts the next sequence; the rest is padding); `pretrain` documents
   are cut at sequence boundaries.
5. **Prefetcher**: a background thread assembles the next steps' batches while a step runs.

The stream's `state()` (epoch, block, row, and the packer's unfinished documents) is small and
exact: a stream built from it yields the very sequences the first one would have yielded next.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow.parquet as pq
import xxhash

from synth.train.spec import DataSpec, TrainError

IGNORE = -100
KIND_COLUMNS = {"instruct": (["instruction", "input"], "output"), "code": (["instruction"], "response")}
"""sft columns by the synth dataset `kind`, when the spec names none."""

Example = tuple[list[int], list[int]]
"""One document: its token ids and its (already shifted) targets, of equal length."""


# ---------------------------------------------------------------- source


@dataclass(frozen=True)
class Block:
    file: str
    row_group: int
    rows: int


def parquet_files(path: Path) -> list[Path]:
    """The dataset's Parquet files: `path/data/*.parquet` for a synth output, else `path/*.parquet`."""
    folder = path / "data" if (path / "data").is_dir() else path
    if not folder.is_dir():
        raise TrainError(f"data.path: dataset folder not found: {path}")
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise TrainError(f"data.path: no .parquet files in {folder} "
                         "(expected a synth output folder or a Parquet folder)")
    return files


def data_identity(files: list[Path]) -> list[tuple[str, int]]:
    """Names and sizes of the files: enough to tell a resumed run its data changed."""
    return [(f.name, f.stat().st_size) for f in files]


class Source:
    """The dataset's blocks, columns and split; reads one block at a time."""

    def __init__(self, spec: DataSpec, files: list[Path], seed: int):
        self.spec, self.seed = spec, seed
        metas = [(f, pq.ParquetFile(f)) for f in files]
        self.blocks = [Block(str(f), i, pf.metadata.row_group(i).num_rows)
                       for f, pf in metas for i in range(pf.metadata.num_row_groups)]
        self.rows = sum(b.rows for b in self.blocks)
        if self.rows == 0:
            raise TrainError(f"data.path: the dataset in {files[0].parent} has no rows")
        self.schema_names = metas[0][1].schema_arrow.names
        self.prompt_columns, self.response_column = self._sft_columns()
        self.columns = self._needed_columns()

    def _sft_columns(self) -> tuple[list[str], str | None]:
        if self.spec.format != "sft":
            return [], None
        prompt, response = self.spec.prompt_columns, self.spec.response_column
        if prompt is None or response is None:
            default_prompt, default_response = KIND_COLUMNS.get(self._kind(), KIND_COLUMNS["instruct"])
            prompt, response = prompt or default_prompt, response or default_response
        return list(prompt), response

    def _kind(self) -> str | None:
        if "kind" not in self.schema_names:
            return None
        block = next(b for b in self.blocks if b.rows)
        return pq.ParquetFile(block.file).read_row_group(block.row_group, columns=["kind"]).column(0)[0].as_py()

    def _needed_columns(self) -> list[str]:
        if self.spec.format == "sft":
            wanted = {c: "data.prompt_columns" for c in self.prompt_columns}
            wanted[self.response_column] = "data.response_column"
        else:
            wanted = {self.spec.text_column: "data.text_column"}
        for column, key in wanted.items():
            if column not in self.schema_names:
                raise TrainError(f"{key}: the dataset has no column {column!r} (its columns: "
                                 f"{', '.join(self.schema_names)}); name its text column(s) in {key}")
        return list(dict.fromkeys([*wanted, *(["id"] if "id" in self.schema_names else [])]))

    def read(self, index: int) -> dict[str, list[Any]]:
        block = self.blocks[index]
        table = pq.ParquetFile(block.file).read_row_group(block.row_group, columns=self.columns)
        data = {c: table.column(c).to_pylist() for c in self.columns}
        if "id" not in data:
            data["id"] = [f"{Path(block.file).name}:{block.row_group}:{r}" for r in range(block.rows)]
        return data

    def is_eval(self, key: str) -> bool:
        return xxhash.xxh64_intdigest(f"{self.seed}\x1f{key}".encode()) / 2**64 < self.spec.eval_fraction


# ---------------------------------------------------------------- encoder


class Encoder:
    """A row as one document: token ids and shifted targets (prompt tokens unsupervised in sft)."""

    def __init__(self, spec: DataSpec, source: Source, tokenizer, seq_len: int):
        self.spec, self.source, self.tokenizer, self.seq_len = spec, source, tokenizer, seq_len
        if spec.format == "sft" and not tokenizer.chat_template:
            raise TrainError("data.format: sft needs a tokenizer with a chat template; this model has none "
                             "(use format: pretrain, or a chat model's tokenizer)")
        if tokenizer.eos_token_id is None:
            raise TrainError("the tokenizer has no end-of-sequence token to close documents with")

    def encode(self, row: dict[str, Any]) -> Example:
        if self.spec.format == "pretrain":
            ids = self._ids(row[self.spec.text_column] or "") + [self.tokenizer.eos_token_id]
            return ids, ids[1:] + [IGNORE]
        prompt_ids, response_ids = self._chat(row)
        if len(prompt_ids) >= self.seq_len:
            raise TrainError(f"row {row['id']}: its prompt is {len(prompt_ids)} tokens, which leaves no room for "
                             f"the response in seq_len {self.seq_len}: raise seq_len above the longest prompt")
        ids = (prompt_ids + response_ids)[: self.seq_len]
        labels = ([IGNORE] * len(prompt_ids) + response_ids)[: self.seq_len]
        return ids, labels[1:] + [IGNORE]

    def _chat(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        user = "\n\n".join(str(row[c]) for c in self.source.prompt_columns if row[c] not in (None, ""))
        messages = [{"role": "system", "content": self.spec.system_prompt}] if self.spec.system_prompt else []
        messages.append({"role": "user", "content": user})
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        reply = {"role": "assistant", "content": str(row[self.source.response_column] or "")}
        full = self.tokenizer.apply_chat_template([*messages, reply], tokenize=False)
        if not full.startswith(prompt):
            raise TrainError("the chat template does not render the prompt as the start of the conversation, "
                             "so the prompt tokens cannot be told apart for masking")
        return self._ids(prompt), self._ids(full[len(prompt):])

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- packer


@dataclass
class Sequence:
    input_ids: np.ndarray
    targets: np.ndarray
    position_ids: np.ndarray
    tokens: int
    """Real (non-padding) tokens."""


class Packer:
    """Concatenates documents into `seq_len` sequences; `pending` is everything not yet emitted."""

    def __init__(self, seq_len: int, pad_id: int, cut_documents: bool, pending: list[Example] | None = None):
        self.seq_len, self.pad_id, self.cut = seq_len, pad_id, cut_documents
        self.pending: list[Example] = [(list(i), list(t)) for i, t in pending or []]

    def add(self, example: Example) -> None:
        self.pending.append(example)

    def pop(self) -> Sequence | None:
        """The next full sequence, or None until more documents arrive."""
        if self.cut:
            if sum(len(ids) for ids, _ in self.pending) < self.seq_len:
                return None
            return self._take_tokens(self.seq_len)
        count, fill = self._fitting()
        if count == len(self.pending) and fill < self.seq_len:
            return None
        return self._take_documents(count)

    def flush(self) -> Sequence | None:
        """Whatever is left as one last, padded sequence (for the finite eval set)."""
        if not self.pending:
            return None
        return self._take_tokens(self.seq_len) if self.cut else self._take_documents(self._fitting()[0])

    def _fitting(self) -> tuple[int, int]:
        """How many pending documents fit one sequence whole, and their tokens."""
        count, fill = 0, 0
        while count < len(self.pending) and fill + len(self.pending[count][0]) <= self.seq_len:
            fill += len(self.pending[count][0])
            count += 1
        return count, fill

    def _take_documents(self, count: int) -> Sequence:
        pieces, self.pending = self.pending[:count], self.pending[count:]
        return self._sequence(pieces)

    def _take_tokens(self, n: int) -> Sequence:
        pieces: list[Example] = []
        while n and self.pending:
            ids, targets = self.pending[0]
            pieces.append((ids[:n], targets[:n]))
            if len(ids) > n:
                self.pending[0] = (ids[n:], targets[n:])
            else:
                self.pending.pop(0)
            n -= len(pieces[-1][0])
        return self._sequence(pieces)

    def _sequence(self, pieces: list[Example]) -> Sequence:
        tokens = sum(len(ids) for ids, _ in pieces)
        pad = self.seq_len - tokens
        ids = [t for piece, _ in pieces for t in piece] + [self.pad_id] * pad
        targets = [t for _, piece in pieces for t in piece] + [IGNORE] * pad
        positions = [p for piece, _ in pieces for p in range(len(piece))] + list(range(pad))
        as_array = lambda xs: np.asarray(xs, dtype=np.int64)
        return Sequence(as_array(ids), as_array(targets), as_array(positions), tokens)


# ---------------------------------------------------------------- streams


class TrainStream:
    """Endless packed sequences of the train split, epoch after epoch; resumable from `state()`."""

    def __init__(self, source: Source, encoder: Encoder, packer: Packer, seed: int, state: dict | None = None):
        self.source, self.encoder, self.packer, self.seed = source, encoder, packer, seed
        state = state or {}
        self.epoch, self.block, self.row = state.get("epoch", 0), state.get("block", 0), state.get("row", 0)
        if state:
            self.packer.pending = [(list(i), list(t)) for i, t in state["pending"]]

    def state(self) -> dict:
        """Where the stream stands after the last sequence it yielded."""
        return {"epoch": self.epoch, "block": self.block, "row": self.row,
                "pending": [(list(i), list(t)) for i, t in self.packer.pending]}

    def __iter__(self) -> Iterator[Sequence]:
        yield from self._ready()
        while True:
            trained = 0
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source.blocks))
            while self.block < len(order):
                index = int(order[self.block])
                rows = self.source.read(index)
                perm = np.random.default_rng([self.seed, self.epoch, index]).permutation(self.source.blocks[index].rows)
                while self.row < len(perm):
                    r = int(perm[self.row])
                    self.row += 1
                    if self.source.is_eval(rows["id"][r]):
                        continue
                    trained += 1
                    self.packer.add(self.encoder.encode({c: v[r] for c, v in rows.items()}))
                    yield from self._ready()
                self.block, self.row = self.block + 1, 0
            if trained == 0 and not self.packer.pending:
                raise TrainError(f"no rows are left for training: all {self.source.rows} fell in the eval split "
                                 f"(data.eval_fraction {self.source.spec.eval_fraction})")
            self.epoch, self.block = self.epoch + 1, 0

    def _ready(self) -> Iterator[Sequence]:
        while (sequence := self.packer.pop()) is not None:
            yield sequence


class Prefetcher:
    """A step's batch of sequences, read and packed by a background thread ahead of the step.

    Tokenizing and packing a step's documents takes as long as a GPU step of a small model; a
    thread overlaps it with the step before. Each batch comes with the stream's state after it,
    so a checkpoint records where the trained batches end, not where the read-ahead stands.
    """

    def __init__(self, stream: TrainStream, batch_size: int, depth: int = 2):
        self._stream, self._batch_size = stream, batch_size
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="train-data", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            sequences = iter(self._stream)
            while not self._stop.is_set():
                batch = [next(sequences) for _ in range(self._batch_size)]
                self._put((batch, self._stream.state()))
        except Exception as exc:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> tuple[list[Sequence], dict]:
        """The next batch and the stream's state after it."""
        item = self._ready.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def eval_sequences(source: Source, encoder: Encoder, packer: Packer, limit: int) -> list[Sequence]:
    """The eval split's first `limit` packed sequences, in dataset order (read until there are enough)."""
    out: list[Sequence] = []
    for index in range(len(source.blocks)):
        rows = source.read(index)
        for r, key in enumerate(rows["id"]):
            if source.is_eval(key):
                packer.add(encoder.encode({c: v[r] for c, v in rows.items()}))
                while len(out) < limit and (sequence := packer.pop()) is not None:
                    out.append(sequence)
            if len(out) >= limit:
                return out
    while len(out) < limit and (sequence := packer.flush()) is not None:
        out.append(sequence)
    if not out:
        raise TrainError(f"no row of the {source.rows} fell in the eval split; raise data.eval_fraction "
                         f"({source.spec.eval_fraction}) or set it to 0 to train without eval")
    return out


def held_out_sequences(path: Path, encoder: Encoder, packer: Packer) -> list[Sequence]:
    """Every row of a JSONL file of held-out examples (the dataset's prompt and response columns),
    packed: the answers no training row holds, whose loss says what the training taught."""
    source = encoder.source
    needed = [*source.prompt_columns, source.response_column]
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise TrainError(f"data.held_out: cannot read {path}: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
        missing = [c for c in needed if not isinstance(row, dict) or c not in row]
        if missing:
            raise TrainError(f"{path}:{n}: data.held_out rows need the columns {needed}; this one lacks {missing}")
        packer.add(encoder.encode({"id": f"{path.name}:{n}", **row}))
    out = []
    while (sequence := packer.pop() or packer.flush()) is not None:
        out.append(sequence)
    if not out:
        raise TrainError(f"data.held_out: {path} holds no rows")
    return out
