"""Which model the instruct pipeline can afford: each offline GGUF model on the pipeline's own requests.

Every model gets the same requests (those of `bench/llm_throughput.py`'s instruct groups: Self-
Instruct's task, classification and instance prompts, Evol-Instruct's evolutions and responses,
with the sampling pipelines/instruct.yaml gives each) through our `local` backend's llama.cpp
engine at `--slots` slots and `--threads` threads, one model at a time in this process. Per group
it prints requests, prompt tokens (and of them those fed, not copied from the engine's prefix
cache), completion tokens, wall seconds and CPU-seconds of this process,
then per model the CPU-seconds a prompt token and a completion token cost (least squares over
the groups), which `--project MANIFEST` turns into a projected wall time for the LLM work of a
finished run, scaled to `--records` records:

    python bench/instruct_models.py -n 20                                 # 4 requests a group
    (at most 4 a group for now: llm_throughput's workload renders complicate_input, the fifth
    Evol-Instruct operation, without the `data` its template asks for)
    python bench/instruct_models.py -n 20 --project output/small/_manifest.json --records 220

CPU-seconds rather than wall time because this machine is shared: on 2 idle cores the two threads
turn CPU-seconds into about half as many seconds of wall time (llama.cpp's threads spin while they
wait for each other, so a loaded machine overstates CPU-seconds, and the projection errs long).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

INSTRUCT_GROUPS = ("self_instruct/tasks", "self_instruct/classify", "self_instruct/instances",
                   "evol_instruct/evolve", "evol_instruct/respond")  # fmt: skip
MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def requests(per_group: int) -> list[tuple[str, list, object]]:
    import llm_throughput

    # The code group is not the instruct pipeline's; skip building it (it reads the stdlib corpus).
    llm_throughput.code_functions = lambda n, seed: []
    groups = llm_throughput.workload(per_group * len(llm_throughput.GROUPS))
    return [g for g in groups if g[0] in INSTRUCT_GROUPS]


def measure(model: str, groups, slots: int, threads: int) -> list[dict]:
    from synth.llm import make_backend
    from synth.llm.base import SamplingParams
    from synth.spec import LLMSpec

    spec = LLMSpec(engine="llama.cpp", model=None if model == "smollm2-135m" else model, batch_size=slots,
                   threads=threads)  # fmt: skip
    backend = make_backend(spec)
    backend.load()
    # Warm up on a request of no group's, so no measured prompt finds its opening kept by the warm-up.
    backend.generate([[{"role": "user", "content": "Hi!"}]], SamplingParams(max_tokens=2))
    rows = []
    for name, batch, sampling in groups:
        wall, cpu = time.perf_counter(), time.process_time()
        reused = backend.prefixes.reused_tokens
        out = backend.generate(batch, sampling)
        prompt_tokens = sum(c.prompt_tokens for c in out)
        rows.append({"model": model, "group": name, "requests": len(out), "prompt_tokens": prompt_tokens,
                     "fed_tokens": prompt_tokens - (backend.prefixes.reused_tokens - reused),
                     "completion_tokens": sum(c.completion_tokens for c in out),
                     "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                     "cut_off": sum(c.finish_reason == "length" for c in out)})  # fmt: skip
        r = rows[-1]
        print(f"{model:<20} {name:<24} {r['requests']:>3} req {r['prompt_tokens']:>6} prompt {r['fed_tokens']:>6} fed "
              f"{r['completion_tokens']:>5} "
              f"completion tok {r['seconds']:>7.1f} s {r['cpu_seconds']:>7.1f} cpu-s "
              f"{r['completion_tokens'] / r['cpu_seconds']:>6.1f} completion tok/cpu-s  load {os.getloadavg()[0]:.1f}",
              flush=True)  # fmt: skip
    backend.close()
    return rows


def token_costs(rows: list[dict]) -> tuple[float, float]:
    """CPU-seconds per prompt token and per completion token, fitted over a model's groups (both >= 0)."""
    a = np.array([[r["prompt_tokens"], r["completion_tokens"]] for r in rows], dtype=float)
    b = np.array([r["cpu_seconds"] for r in rows])
    (per_prompt, per_completion), *_ = np.linalg.lstsq(a, b, rcond=None)
    if per_prompt < 0 or per_completion < 0:  # a degenerate fit: charge all time to completions
        return 0.0, float(b.sum() / a[:, 1].sum())
    return float(per_prompt), float(per_completion)


def project(manifest: dict, records: int, costs: tuple[float, float], threads: int) -> dict:
    """Wall seconds of a run's LLM work, scaled from its records to `records`, on `threads` idle cores."""
    prompt = sum(s["counters"].get("llm_prompt_tokens", 0) for s in manifest["stages"])
    completion = sum(s["counters"].get("llm_completion_tokens", 0) for s in manifest["stages"])
    scale = records / max(manifest["records"], 1)
    cpu = (prompt * costs[0] + completion * costs[1]) * scale
    return {"run_records": manifest["records"], "prompt_tokens": prompt, "completion_tokens": completion,
            "scale": round(scale, 3), "cpu_seconds": round(cpu, 1), "wall_minutes": round(cpu / threads / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20, help="requests, split evenly over the five groups")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--slots", type=int, default=32, help="the pipeline's llm batch_size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--project", type=Path, help="a finished run's _manifest.json to project")
    parser.add_argument("--records", type=int, default=200, help="records the projection is scaled to")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()

    groups = requests(max(1, args.n // len(INSTRUCT_GROUPS)))
    results = {}
    for model in args.models.split(","):
        rows = measure(model, groups, args.slots, args.threads)
        costs = token_costs(rows)
        results[model] = {"groups": rows, "cpu_s_per_prompt_token": costs[0], "cpu_s_per_completion_token": costs[1]}
        cpu = sum(r["cpu_seconds"] for r in rows)
        done = sum(r["completion_tokens"] for r in rows)
        fed, prompt = sum(r["fed_tokens"] for r in rows), sum(r["prompt_tokens"] for r in rows)
        print(f"{model}: {fed} of {prompt} prompt tokens fed, the rest copied from the prefix cache")
        print(f"{model}: {done / cpu:.1f} completion tokens per CPU-second over the mix; "
              f"{1000 * costs[0]:.2f} ms per prompt token, {1000 * costs[1]:.2f} ms per completion token (CPU)")
        if args.project:
            results[model]["projection"] = p = project(json.loads(args.project.read_text()), args.records, costs,
                                                       args.threads)  # fmt: skip
            print(f"  projected LLM time for {args.records} records ({args.project}, {p['run_records']} records, "
                  f"x{p['scale']}): {p['cpu_seconds']:.0f} CPU-s, ~{p['wall_minutes']} min on {args.threads} idle cores")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
