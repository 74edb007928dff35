"""Prompt prefixes kept for the llama.cpp engine, each in a llama.cpp sequence of its own.

With one key/value stream per sequence (`kv_unified = False`), llama.cpp copies a sequence into
another stream only whole (`llama_memory_seq_cp` across streams copies every layer's buffer of the
stream, then the metadata of the source's cells): so a kept prefix is a whole stream, the context's
sequences after its slots. A prefix is found by the keys of the prompt chunks it ends with
(`PrefixCache.key`, chained over the chunks `chunk_end` cuts), so a stream that holds a prompt's
first chunks serves every later prompt that opens with those chunks, cut alike. Streams are
reused least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict


class PrefixStreams:
    """Which of the context's prefix sequences holds which prompt prefixes, within a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._streams: OrderedDict[int, list[tuple[bytes, int]]] = OrderedDict()
        """Sequence id -> the (key, end) of every chunk it holds; least recently used first."""
        self._free: list[int] = []
        self.reused_tokens = 0
        """Prompt tokens copied from a kept prefix instead of fed (the transformers engine's count)."""

    def count(self, stream_bytes: int, most: int) -> int:
        """How many streams of `stream_bytes` the budget holds, at most `most`."""
        return max(0, min(self.budget // max(stream_bytes, 1), most))

    def reset(self, first_seq: int, count: int) -> None:
        """Forget every prefix (a new context): sequences first_seq .. first_seq + count - 1 are free."""
        self._streams.clear()
        self._free = list(range(first_seq + count - 1, first_seq - 1, -1))

    def find(self, chunks: list[tuple[bytes, int]]) -> tuple[int, int] | None:
        """(sequence, end) of the longest of a prompt's openings (each chunk's key and end, in
        order) that a stream holds, or None."""
        for key, end in reversed(chunks):
            for seq, held in self._streams.items():
                if (key, end) in held:
                    self._streams.move_to_end(seq)
                    self.reused_tokens += end
                    return seq, end
        return None

    def keep(self, chunks: list[tuple[bytes, int]]) -> int | None:
        """The sequence to copy a prompt's opening into (these chunks): a free one, else the least
        recently used one, forgotten; None without any."""
        if self._free:
            seq = self._free.pop()
        elif self._streams:
            seq, _ = self._streams.popitem(last=False)
        else:
            return None
        self._streams[seq] = chunks
        return seq
