"""How varied an instruction dataset is: the numbers a reader checks before training on it.

- `mean_pairwise_rouge_l`: the mean ROUGE-L F over all pairs of instructions (lower is more varied);
- `near_duplicate_share`: the share of instructions with another one above `NEAR_DUPLICATE` (0.7,
  Self-Instruct's own threshold);
- `close_to_seed_share`: the share of instructions above `CLOSE_TO_SEED` (0.5) against some seed
  task, i.e. barely changed from the human-written examples the run started from.

Pairs are all-against-all, so a dataset larger than `max_records` is measured on a seeded sample
of that many instructions (recorded as `measured`). `write_diversity_report` runs when the
dataset card is written, on the finished data, and leaves `OUTPUT/_reports/diversity/report.md`
(which the card includes) and `metrics.json` (which `synth inspect` prints).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from generators.instruct.rouge import RougeLPool

NEAR_DUPLICATE = 0.7
CLOSE_TO_SEED = 0.5
MAX_RECORDS = 2000


def diversity(instructions: list[str], seeds: list[str] = (), max_records: int = MAX_RECORDS, seed: int = 0) -> dict:
    """The three measures over `instructions` (a sample of `max_records` if there are more)."""
    texts = list(instructions)
    if len(texts) > max_records:
        texts = random.Random(seed).sample(texts, max_records)
    pool = RougeLPool(texts)
    total = near = 0.0
    for i, text in enumerate(texts):
        scores = pool.scores(text)
        scores[i] = 0.0  # itself
        total += scores.sum()
        near += scores.max() > NEAR_DUPLICATE
    pairs = len(texts) * (len(texts) - 1)
    seed_pool = RougeLPool(seeds)
    close = sum(seed_pool.max_score(text) > CLOSE_TO_SEED for text in texts) if seeds else None
    return {
        "records": len(instructions),
        "measured": len(texts),
        "mean_pairwise_rouge_l": round(float(total / pairs), 4) if pairs else None,
        "near_duplicate_share": round(near / len(texts), 4) if texts else None,
        "close_to_seed_share": round(close / len(texts), 4) if texts and close is not None else None,
        "seed_tasks": len(seeds),
    }


def seed_instructions(manifest: dict) -> list[str]:
    """The instructions of the seed files the run's stages read (`seed_tasks`), where still there."""
    out: list[str] = []
    for stage in manifest.get("spec", {}).get("stages", []):
        path = stage.get("seed_tasks")
        if path and Path(path).is_file():
            for line in Path(path).read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line).get("instruction", ""))
    return out


def write_diversity_report(output: Path, manifest: dict) -> dict | None:
    """Measure the finished dataset's instructions; None when it has no `instruction` column."""
    import pyarrow.dataset as ds

    if "instruction" not in manifest.get("schema", {}):
        return None
    column = ds.dataset(output / "data", format="parquet").to_table(columns=["instruction"])["instruction"]
    metrics = diversity([t or "" for t in column.to_pylist()], seed_instructions(manifest), seed=manifest.get("seed", 0))
    folder = output / "_reports" / "diversity"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("metrics.json", json.dumps(metrics, indent=2)), ("report.md", _report(metrics))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)
    return metrics


def _report(m: dict) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    sample = f" (a seeded sample of {m['measured']})" if m["measured"] < m["records"] else ""
    seeds = (f"| instructions within ROUGE-L {CLOSE_TO_SEED} of a seed task ({m['seed_tasks']} seeds) "
             f"| {pct(m['close_to_seed_share'])} |")  # fmt: skip
    mean = "n/a" if m["mean_pairwise_rouge_l"] is None else f"{m['mean_pairwise_rouge_l']:.3f}"
    return "\n".join([
        f"Diversity of the {m['records']} instructions{sample}: lower ROUGE-L means more varied.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| mean pairwise ROUGE-L F | {mean} |",
        f"| instructions with a near duplicate (ROUGE-L > {NEAR_DUPLICATE}) | {pct(m['near_duplicate_share'])} |",
        seeds if m["seed_tasks"] else "| instructions close to a seed task | no seed file in the spec |",
        "",
    ])  # fmt: skip


def describe(m: dict) -> str:
    """One line for `synth inspect`."""
    parts = [f"mean pairwise ROUGE-L {m['mean_pairwise_rouge_l']}", f"near duplicates {m['near_duplicate_share']}"]
    if m.get("close_to_seed_share") is not None:
        parts.append(f"close to a seed {m['close_to_seed_share']}")
    return f"diversity of {m['measured']} of {m['records']} instructions: " + ", ".join(parts)
