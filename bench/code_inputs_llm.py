"""Where `code_inputs` spends its LLM time: prompt tokens fed and reused, prefill against decode.

The shipped `code_inputs` settings (six answers per function, 64 tokens, temperature 0.8) on
`--functions` standard-library functions, asked of the embedded model through the local
transformers engine, with the stage's own `_ask_llm`. Prints one line per `generate` call (its
requests, prompt tokens, tokens fed and reused from the prefix cache, completion tokens, seconds),
then the totals, the seconds spent in prefill and in decode steps, and a digest of the answers'
texts, so two revisions can be compared on the same functions (the same digest: the same texts).
It also counts, by their number in an answer's list (`calls_asked` lines), the model's calls that
are new (not a doctest's, not in an earlier line or answer of the function) and the characters each
line took: what asking for fewer calls would save and lose.

    .venv/bin/python bench/code_inputs_llm.py --functions 32 --slots 16 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from pathlib import Path

from generators.code.corpus import CodeFunctionsConfig, corpus_table
from generators.code.calls import Signature
from generators.code.inputs import CodeInputs, CodeInputsConfig, doctest_calls, function_node, proposed_calls
from generators.instruct.prompts import Sampling
from synth.llm import make_client
from synth.llm.local import LocalClient
from synth.spec import LLMSpec
from synth.stage import StageContext


class Meter:
    """Seconds in the engine's prefill and decode steps, and prompt tokens fed by prefill forwards."""

    def __init__(self) -> None:
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self.fed = 0
        self._in_prefill = False

    def attach(self, client: LocalClient) -> None:
        prefill, decode, forward = client._prefill, client._decode, client._forward

        def timed_prefill(*args):
            started, self._in_prefill = time.perf_counter(), True
            try:
                return prefill(*args)
            finally:
                self.seconds["prefill"] += time.perf_counter() - started
                self._in_prefill = False

        def timed_decode(*args):
            started = time.perf_counter()
            try:
                return decode(*args)
            finally:
                self.seconds["decode"] += time.perf_counter() - started

        def counted_forward(ids, *args):
            if self._in_prefill:
                self.fed += ids.shape[1]
            return forward(ids, *args)

        client._prefill, client._decode, client._forward = timed_prefill, timed_decode, counted_forward


def main() -> None:
    args = _arguments()
    table = corpus_table(CodeFunctionsConfig(max_functions=args.functions), seed=args.seed).table
    rows = [r for r in table.to_pylist() if r["_drop_reason"] is None]
    spec = LLMSpec(batch_size=args.slots, threads=args.threads, engine="transformers", cache=False)
    client = make_client(spec)
    backend: LocalClient = client.backend
    backend.load()
    meter = Meter()
    meter.attach(backend)
    generate = backend.generate

    def reported_generate(requests, sampling, on_completion=None, **kwargs):
        reused, fed, started = backend.prefixes.reused_tokens, meter.fed, time.perf_counter()
        out = generate(requests, sampling, on_completion=on_completion, **kwargs)
        print(json.dumps({"requests": len(requests), "prompt_tokens": sum(c.prompt_tokens for c in out),
                          "fed": meter.fed - fed, "reused": backend.prefixes.reused_tokens - reused,
                          "completion_tokens": sum(c.completion_tokens for c in out),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)  # fmt: skip
        return out

    backend.generate = reported_generate
    ctx = StageContext(run_name="bench", run_id="bench-1", seed=args.seed, stage_name="code_inputs", stage_index=3,
                       output_dir=Path("."))  # fmt: skip
    config = CodeInputsConfig(inputs_per_function=8, candidates_per_function=24, calls_asked=4,
                              answers_per_function=args.answers, sampling=Sampling(max_tokens=64, temperature=0.8))  # fmt: skip
    stage = CodeInputs(config, ctx)
    stage.llm = client
    started = time.perf_counter()
    texts = stage._ask_llm(rows)
    seconds = time.perf_counter() - started
    model_calls = sum(origin == client.model_id for r, t in zip(rows, texts) for _, origin in stage.inputs_for(r, t))
    new_calls, chars = by_line(rows, texts)
    print(json.dumps({
        "functions": len(rows), "answers": args.answers, "llm_seconds": round(seconds, 1),
        "prefill_seconds": round(meter.seconds["prefill"], 1), "decode_seconds": round(meter.seconds["decode"], 1),
        "fed_tokens": meter.fed, "model_calls_kept": model_calls,
        "new_calls_by_line": new_calls, "characters_by_line": chars,
        "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))  # fmt: skip


def by_line(rows: list[dict], texts: list[str]) -> tuple[dict[int, int], dict[int, int]]:
    """New model calls and characters by the line's number in its answer ("2. f(...)": 2)."""
    new_calls: dict[int, int] = {}
    chars: dict[int, int] = {}
    for row, text in zip(rows, texts):
        fn = function_node(row["source"], row["name"])
        signature = Signature.of(fn)
        seen = set(doctest_calls(fn, signature))
        for line in text.splitlines():
            number = re.match(r"\s*(\d+)\.", line)
            if number is None:
                continue
            position = int(number.group(1))
            chars[position] = chars.get(position, 0) + len(line)
            for call in proposed_calls(line, fn.name, signature):
                if call not in seen:
                    seen.add(call)
                    new_calls[position] = new_calls.get(position, 0) + 1
    return dict(sorted(new_calls.items())), dict(sorted(chars.items()))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=32, help="standard-library functions sampled")
    parser.add_argument("--answers", type=int, default=6, help="answers per function")
    parser.add_argument("--slots", type=int, default=16, help="the engine's batch_size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    main()
