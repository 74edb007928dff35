"""Near-dedup side by side: ours (`minhash_dedup` on Ray), datasketch's MinHashLSH, datatrove's MinHash.

Corpus: real text as the base (docstrings shipped with Python and the installed packages, at least
40 words, bases that resemble an earlier one (estimated Jaccard >= 0.25) removed), half the bases
copied 1-3 times with word substitutions, insertions, deletions and swaps of neighbours at 1, 2, 5
or 10% of the words, shuffled. Each base and its copies form one group that should keep exactly
one record.

Columns printed, per method:
- recall: of the drops the groups call for (size - 1 each), the share made;
- recall@r: copies edited at rate r that share a kept record with their base (not both kept);
- precision: of the records dropped, the share whose group still keeps another;
- lost: groups with no record kept (an original lost);
- docs/s/core: corpus size / wall time / cores used (ours: the Ray cluster's CPUs; others: one);
- docs/cpu-s: corpus size / CPU seconds of this process and its children (Ray's processes on the
  embedded Ray), which a busy machine does not skew the way it skews wall time.

    .venv/bin/python bench/dedup.py                                   # 10,000 records, every method
    .venv/bin/python bench/dedup.py --records 100000 --methods ours   # time and peak memory
    .venv/bin/python bench/dedup.py --ray-address head:6379           # ours on a cluster, unchanged

Each method's wall time, CPU time and peak memory (PSS of this process and its children) are
printed before the table; after it, signatures alone (ours vs datasketch's `MinHash.bulk`).

Ours runs the stage exactly as the runner does (`MinhashDedup.apply` on a Ray Dataset), with the
spec defaults. datasketch: `MinHash.bulk` with xxhash (its fastest path), `MinHashLSH(threshold=
0.5)`, each record queried then inserted if it matched nothing. datatrove: its four MinHash steps
on a `LocalPipelineExecutor`, one worker, with its defaults (5-grams, 14 buckets x 8 hashes) and,
as `datatrove_32x4`, with our bands (32 x 4); its xxhash helper is shimmed to encode text, which
xxhash 4 no longer does by itself. Ray's worker processes are started (a small run) before timing.
"""

from __future__ import annotations

import argparse
import os
import re
import sysconfig
import tempfile
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

RATES = (0.01, 0.02, 0.05, 0.10)
MIN_WORDS = 40
_DOCSTRING = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)


# ---------------------------------------------------------------- corpus


def real_texts(limit: int) -> list[str]:
    """Distinct docstrings of at least MIN_WORDS words: the standard library first, then packages."""
    seen, texts = set(), []
    for root in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]):
        for path in sorted(Path(root).rglob("*.py")):
            for match in _DOCSTRING.finditer(path.read_text(errors="ignore")):
                words = next(g for g in match.groups() if g is not None).split()
                text = " ".join(words)
                if len(words) >= MIN_WORDS and text not in seen:
                    seen.add(text)
                    texts.append(text)
            if len(texts) >= limit:
                return texts
    return texts


def distinct_bases(texts: list[str], alike: float = 0.25) -> list[str]:
    """Drop texts that resemble an earlier one, so the only near-duplicates are the ones we make.

    256 permutations estimate within +-0.03, so no pair left is much above `alike`.
    """
    from filters.dedup.signatures import MinHasher, band_keys, estimated_jaccard

    sigs = MinHasher(5, 256, seed=12345).signatures(pa.array(texts, pa.large_string()))
    keys = band_keys(sigs, 128, 2)  # 2-row bands: a pair at Jaccard 0.25 meets with p > 0.99
    holders: dict[int, list[int]] = {}
    kept = []
    for i, row in enumerate(keys.tolist()):
        seen = sorted({j for k in row for j in holders.get(k, ())})
        if seen and estimated_jaccard(sigs[seen], sigs[i]).max() >= alike:
            continue
        kept.append(i)
        for k in row:
            holders.setdefault(k, []).append(i)
    return [texts[i] for i in kept]


def edit(words: list[str], rate: float, rng: np.random.Generator, vocab: list[str]) -> list[str]:
    """Apply round(rate * len) random edits: substitute, insert, delete or swap neighbours."""
    words = list(words)
    for _ in range(max(1, round(rate * len(words)))):
        op, at = rng.integers(4), int(rng.integers(len(words)))
        if op == 0:
            words[at] = vocab[rng.integers(len(vocab))]
        elif op == 1:
            words.insert(at, vocab[rng.integers(len(vocab))])
        elif op == 2 and len(words) > 1:
            del words[at]
        elif op == 3 and at + 1 < len(words):
            words[at], words[at + 1] = words[at + 1], words[at]
    return words


def make_corpus(records: int, seed: int = 0) -> pa.Table:
    """`records` rows: id, text, group (its base's number), rate (0 for a base)."""
    bases = distinct_bases(real_texts(int(records * 0.75)))[: records // 2]
    rng = np.random.default_rng(seed)
    vocab = sorted({w for text in bases[:2000] for w in text.split()})
    rows = [(text, g, 0.0) for g, text in enumerate(bases)]
    copied = rng.permutation(len(bases))[: max(1, len(bases) // 2)]
    for n in range(records - len(bases)):
        g = int(copied[n % len(copied)])
        rate = RATES[n % len(RATES)]
        rows.append((" ".join(edit(bases[g].split(), rate, rng, vocab)), g, rate))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    texts = [r[0] for r in rows]
    return pa.table({
        "id": [xxhash.xxh64_hexdigest(t.encode()) for t in texts],
        "text": texts,
        "group": np.array([r[1] for r in rows], np.int64),
        "rate": np.array([r[2] for r in rows]),
    })  # fmt: skip


# ---------------------------------------------------------------- scoring


def score(corpus: pa.Table, kept: np.ndarray) -> dict[str, float]:
    group = corpus.column("group").to_numpy()
    rate = corpus.column("rate").to_numpy()
    size = np.bincount(group)
    kept_per_group = np.bincount(group, weights=kept, minlength=len(size))
    dropped_per_group = size - kept_per_group
    correct = np.minimum(dropped_per_group, size - 1).sum()
    out = {
        "recall": correct / max((size - 1).sum(), 1),
        "precision": correct / max(dropped_per_group.sum(), 1),
        "lost": int((kept_per_group == 0).sum()),
    }
    base_kept = np.zeros(len(size), bool)
    base_kept[group[rate == 0]] = kept[rate == 0]
    for r in RATES:
        copies = rate == r
        out[f"recall@{r:.0%}"] = float(np.mean(~(kept[copies] & base_kept[group[copies]])))
    return out


# ---------------------------------------------------------------- methods


def run_ours(corpus: pa.Table, block_rows: int = 5000) -> tuple[np.ndarray, float, float]:
    """The stage on a Ray Dataset of `block_rows`-row blocks (the runner writes 10,000-row parts)."""
    import ray
    import ray.data

    from filters.dedup.minhash import MinhashDedup, MinhashDedupConfig
    from synth.stage import StageContext

    ds = ray.data.from_arrow([corpus.slice(i, block_rows) for i in range(0, corpus.num_rows, block_rows)])
    ctx = StageContext("bench", "bench", 0, "minhash_dedup", 0, Path(tempfile.gettempdir()))
    started = time.perf_counter()
    out = MinhashDedup(MinhashDedupConfig(), ctx).apply(ds)
    reasons = pa.concat_tables(ray.get(out.select_columns(["_drop_reason"]).to_arrow_refs())).column(0)
    seconds = time.perf_counter() - started
    return reasons.is_null().to_numpy(zero_copy_only=False), seconds, ray.cluster_resources()["CPU"]


def warm_up(corpus: pa.Table) -> None:
    """Start Ray's worker processes and their imports before timing, as a running cluster has them."""
    run_ours(corpus.slice(0, 2000), block_rows=500)


def _datasketch_shingles(text: str, n: int = 5) -> list[bytes]:
    words = re.findall(r"\w+", text.lower())
    return [" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))]


def run_datasketch(corpus: pa.Table) -> tuple[np.ndarray, float, float]:
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    texts = corpus.column("text").to_pylist()
    started = time.perf_counter()
    hashes = MinHash.bulk([_datasketch_shingles(t) for t in texts], num_perm=128, hashfunc=xxhash.xxh32_intdigest)
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    kept = np.zeros(len(texts), bool)
    for i, mh in enumerate(hashes):
        lean = LeanMinHash(mh)
        if not lsh.query(lean):
            lsh.insert(i, lean)
            kept[i] = True
    return kept, time.perf_counter() - started, 1.0


def run_datatrove(corpus: pa.Table, bands: int = 32, rows: int = 4) -> tuple[np.ndarray, float, float]:
    import datatrove.utils.hashes.xxhash as datatrove_xxhash
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    datatrove_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    texts = corpus.column("text").to_pylist()
    kept = np.zeros(len(texts), bool)

    def read(data, rank: int = 0, world_size: int = 1):
        yield from (Document(text=t, id=str(i)) for i, t in enumerate(texts))

    def collect(data, rank: int = 0, world_size: int = 1):
        for doc in data:
            kept[int(doc.id)] = True
        return iter(())

    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        steps = [
            ([read, MinhashDedupSignature(output_folder=f"{tmp}/sigs", config=config)], 1),
            ([MinhashDedupBuckets(input_folder=f"{tmp}/sigs", output_folder=f"{tmp}/buckets", config=config)], bands),
            ([MinhashDedupCluster(input_folder=f"{tmp}/buckets", output_folder=f"{tmp}/remove", config=config)], 1),
            ([read, MinhashDedupFilter(input_folder=f"{tmp}/remove"), collect], 1),
        ]
        started = time.perf_counter()
        for i, (pipeline, tasks) in enumerate(steps):
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=f"{tmp}/logs{i}").run()
        seconds = time.perf_counter() - started
    return kept, seconds, 1.0


def signature_speed(corpus: pa.Table) -> tuple[float, float]:
    """Docs/s on one core of signatures alone: our numpy hashing vs datasketch's MinHash.bulk."""
    from datasketch import MinHash

    from filters.dedup.signatures import MinHasher

    texts = corpus.column("text").slice(0, 5000)
    started = time.perf_counter()
    MinHasher(5, 128, 0).signatures(texts.combine_chunks())
    ours = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    MinHash.bulk([_datasketch_shingles(t) for t in texts.to_pylist()], num_perm=128, hashfunc=xxhash.xxh32_intdigest)
    return ours, len(texts) / (time.perf_counter() - started)


# ---------------------------------------------------------------- plumbing


@contextmanager
def _quiet():
    """datatrove logs every step to stderr; keep the table readable."""
    saved = os.dup(2), os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved[0], 2)
            os.dup2(saved[1], 1)


class PeakMemory:
    """Peak proportional set size (PSS) of this process and all its descendants (Ray's processes)."""

    def __init__(self, every_s: float = 0.5):
        self.peak, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            total = sum(_pss(p.pid) for p in [me, *me.children(recursive=True)])
            self.peak = max(self.peak, total)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its live descendants (Ray's, on the embedded Ray)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def start_ray(address: str | None, cpus: int) -> None:
    import ray
    import ray.data

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().execution_options.preserve_order = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--methods", default="ours,datasketch,datatrove,datatrove_32x4")
    parser.add_argument("--ray-address", default=None, help="an existing Ray cluster; default: embedded Ray")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    args = parser.parse_args()

    started = time.perf_counter()
    corpus = make_corpus(args.records)
    copies = int((corpus.column("rate").to_numpy() > 0).sum())
    print(f"corpus: {corpus.num_rows} records, {corpus.num_rows - copies} bases, {copies} edited copies "
          f"({time.perf_counter() - started:.0f} s to build)")  # fmt: skip
    methods = {
        "ours": run_ours,
        "datasketch": run_datasketch,
        "datatrove": partial(run_datatrove, bands=14, rows=8),
        "datatrove_32x4": run_datatrove,
    }
    rows = []
    # Ours last: Ray's processes, once started, would count against the others' CPU time.
    for name in sorted(args.methods.split(","), key=lambda m: m == "ours"):
        if name == "ours":
            start_ray(args.ray_address, args.cpus)
            warm_up(corpus)
        cpu = cpu_seconds()
        with PeakMemory() as memory:
            kept, seconds, cores = methods[name](corpus)
        cpu = cpu_seconds() - cpu
        print(f"{name}: {seconds:.1f} s wall on {cores:.0f} CPUs, {cpu:.1f} CPU s, "
              f"peak memory {memory.peak / 2**30:.2f} GiB (PSS of this process and its children)")  # fmt: skip
        rows.append((name, score(corpus, kept), corpus.num_rows / seconds / cores, corpus.num_rows / cpu))
    print_table(rows)
    ours_sig, datasketch_sig = signature_speed(corpus)
    print(f"signatures alone, one core: ours {ours_sig:,.0f} docs/s, "
          f"datasketch MinHash.bulk {datasketch_sig:,.0f} docs/s")  # fmt: skip


def print_table(rows: list[tuple[str, dict, float, float]]) -> None:
    columns = ["recall", *(f"recall@{r:.0%}" for r in RATES), "precision", "lost"]
    print(f"{'method':<15}" + "".join(f"{c:>11}" for c in columns) + f"{'docs/s/core':>13}{'docs/cpu-s':>12}")
    for name, scores, speed, per_cpu_second in rows:
        cells = "".join(f"{scores[c]:>11.3f}" if c != "lost" else f"{scores[c]:>11d}" for c in columns)
        print(f"{name:<15}{cells}{speed:>13,.0f}{per_cpu_second:>12,.0f}")


if __name__ == "__main__":
    main()
