"""Generation throughput of the local backend at several batch sizes beside llama.cpp single stream.

Both run the embedded SmolLM2-135M-Instruct (ours: transformers on the GGUF dequantised to
float32; llama.cpp: the Q4_1 GGUF itself) on the same chat prompts with the same sampling and
`max_tokens`, with the same number of CPU threads. Throughput is completion tokens per second of
wall time, prompt processing included. Each batch size runs `max(batch, --min-requests)` prompts,
so the small batches stay short.

    python bench/llm_throughput.py                     # batch sizes 1, 8, 32, 64
    python bench/llm_throughput.py --batch-sizes 16,48 --max-tokens 128

On a shared machine, compare rows of one run only: the load average is printed for that reason,
and tokens per CPU-second (busy threads included) is shown beside wall-clock throughput. When the
machine is oversubscribed, `--threads 1` avoids the stalls of spinning worker threads on both sides.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from synth.llm import SamplingParams
from synth.llm.local import LocalClient, default_threads
from synth.llm.models import EMBEDDED_NAME, embedded_gguf
from synth.spec import LLMSpec

TOPICS = [
    "a dragon who is afraid of heights", "the history of bread", "how volcanoes form", "a robot learning to paint",
    "why the sea is salty", "a city under the ocean", "the first day of school", "how bees make honey",
    "a lighthouse keeper's last night", "the rules of chess", "a journey across the desert", "how rainbows appear",
]  # fmt: skip


def prompts(n: int) -> list[list[dict[str, str]]]:
    """n chat requests that ask for long answers, so most run to max_tokens."""
    return [
        [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} (part {i + 1})."}]
        for i in range(n)
    ]


@dataclass
class Result:
    name: str
    batch: int
    requests: int
    tokens: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.tokens / self.cpu_seconds


def run_local(batch: int, requests: int, sampling: SamplingParams, threads: int) -> Result:
    client = LocalClient(LLMSpec(batch_size=batch, threads=threads))
    client.load()
    client.generate(prompts(1), sampling.model_copy(update={"max_tokens": 2}))  # warm up
    start, cpu = time.perf_counter(), time.process_time()
    out = client.generate(prompts(requests), sampling)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    client.close()
    return Result("synth local (transformers)", batch, requests, sum(c.completion_tokens for c in out), seconds, cpu)


def run_llama_cpp(requests: int, sampling: SamplingParams, threads: int) -> Result:
    from llama_cpp import Llama

    llm = Llama(model_path=str(embedded_gguf()), n_ctx=2048, n_threads=threads, verbose=False)
    llm.create_chat_completion(prompts(1)[0], max_tokens=2)  # warm up
    tokens = 0
    start, cpu = time.perf_counter(), time.process_time()
    for request in prompts(requests):
        out = llm.create_chat_completion(
            request,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        tokens += out["usage"]["completion_tokens"]
    return Result("llama.cpp single stream", 1, requests, tokens, time.perf_counter() - start, time.process_time() - cpu)


def table(results: list[Result], baseline: Result | None) -> str:
    head = ["backend", "batch", "requests", "tokens", "seconds", "tokens/s", "vs llama.cpp", "tokens/cpu-s"]
    lines = ["{:<28} {:>5} {:>8} {:>7} {:>8} {:>9} {:>12} {:>12}".format(*head)]
    for r in results:
        ratio = f"{r.rate / baseline.rate:.2f}x" if baseline else "-"
        lines.append(
            f"{r.name:<28} {r.batch:>5} {r.requests:>8} {r.tokens:>7} {r.seconds:>8.1f} {r.rate:>9.1f} {ratio:>12} {r.cpu_rate:>12.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="comma-separated batch sizes for the local backend")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=4, help="prompts per run at least (default: 4)")
    parser.add_argument("--llama-requests", type=int, default=8, help="prompts for llama.cpp (default: 8)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    args = parser.parse_args()

    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=0.95, seed=0)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    print(f"model {EMBEDDED_NAME}, max_tokens {args.max_tokens}, temperature {args.temperature}, threads {args.threads}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)", flush=True)

    baseline = None if args.no_llama else run_llama_cpp(args.llama_requests, sampling, args.threads)
    results = [baseline] if baseline else []
    for batch in sizes:
        results.append(run_local(batch, max(batch, args.min_requests), sampling, args.threads))
        print(f"  batch {batch}: {results[-1].rate:.1f} tokens/s", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
    print(table(results, baseline))
    best = max((r for r in results if r is not baseline), key=lambda r: r.rate)
    if baseline:
        print(f"\nbest local batch size {best.batch}: {best.rate / baseline.rate:.2f}x llama.cpp single stream")


if __name__ == "__main__":
    main()
