"""Where an instruct run's LLM work went: its requests per step, read back from its LLM cache.

Every completion a run generated is one entry of `OUTPUT/_cache/llm/` (request, completion, token
counts, finish reason, the stage that paid). This groups them by the template their last message
was rendered from (its text with any text in place of each placeholder; a one-message request
that matches none is an Evol-Instruct response) and prints, per step: requests, prompt and completion
tokens, and the requests cut off by `max_tokens` with the completion tokens they took, since a
cut-off task list, instance, rewrite or response is dropped:

    python bench/instruct_requests.py output/instruct

Only entries the run paid for count (a cache shared with other runs holds theirs too).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.instruct.prompts import TEMPLATE_DIR  # noqa: E402

RESPONSE = "evol_response"


def template_patterns() -> dict[str, re.Pattern]:
    """Template name -> a pattern its rendered text matches whole (any text for a placeholder)."""
    return {p.stem: re.compile(r"(?s:.*?)".join(map(re.escape, re.split(r"\$\w+", p.read_text().strip()))), re.S)
            for p in sorted(TEMPLATE_DIR.glob("*.txt"))}  # fmt: skip


def step_of(messages: list[dict], templates: dict[str, re.Pattern]) -> str:
    last = messages[-1]["content"]
    for name, pattern in templates.items():
        if pattern.fullmatch(last):
            return name
    return RESPONSE if len(messages) == 1 else "other"


def tally(output: Path) -> dict[str, Counter]:
    run_id = json.loads((output / "_manifest.json").read_text())["run_id"]
    templates = template_patterns()
    steps: dict[str, Counter] = defaultdict(Counter)
    for path in sorted((output / "_cache" / "llm").glob("*/*.json")):
        entry = json.loads(path.read_text())
        if (entry.get("paid_by") or {}).get("run_id") != run_id:
            continue
        done = entry["completion"]
        step = steps[step_of(entry["request"]["messages"], templates)]
        step.update(requests=1, prompt=done["prompt_tokens"], completion=done["completion_tokens"])
        if done["finish_reason"] == "length":
            step.update(cut=1, cut_tokens=done["completion_tokens"])
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="a finished instruct dataset folder (with _cache/llm)")
    steps = tally(parser.parse_args().output)
    print("| step | requests | prompt tokens | per request | completion tokens | per request | cut off | their tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = Counter()
    for name, s in sorted(steps.items()):
        total.update(s)
        print(f"| {name} | {s['requests']:,} | {s['prompt']:,} | {s['prompt'] / s['requests']:.0f} | "
              f"{s['completion']:,} | {s['completion'] / s['requests']:.1f} | {s['cut']} | {s['cut_tokens']:,} |")
    print(f"| all | {total['requests']:,} | {total['prompt']:,} | | {total['completion']:,} | | {total['cut']} | "
          f"{total['cut_tokens']:,} |")


if __name__ == "__main__":
    main()
