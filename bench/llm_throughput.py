"""LLM generation throughput: our `local` backend beside llama.cpp's server and transformers' `generate`.

Every engine gets the same N requests, the prompts our stages really send, each group with the
sampling the shipped pipelines give it (pipelines/instruct.yaml, pipelines/code.yaml):
Self-Instruct's task, classification and instance prompts (from the seed tasks), Evol-Instruct's
evolution prompts and responses (on the seed tasks), and code_inputs' input proposals (on
standard-library functions, with its stop string). A group is one `generate` call, as a stage
round is.

- `local`: our backend as `make_backend` builds it, with each engine (`engine: llama.cpp` on the
  GGUF, `engine: transformers` on it dequantised) at each `--slots` count; our best is the best line;
- `llama-server`: llama.cpp's own server (`.venv/bin/llama-server`, built by scripts/setup.sh) on the
  same GGUF at `--parallel` 1, 4, 16, 64 (continuous batching), asked through our `openai` backend
  with every request of a group in flight at once; sampling as ours (`--top-k 0 --min-p 0`);
- `hf generate`: transformers' own batched `model.generate` on the dequantised model.

Each configuration runs in a child process of its own (the server in its own too), so its peak
memory is its own (resident set high-water mark; for the server, the server's). Each line is
printed as soon as it is measured; the table at the end gives each one's ratio to the best peer,
and the last line is `ratio to best peer: R`: our best tokens/s over the best peer's.

    python bench/llm_throughput.py                       # N = 256, everything
    python bench/llm_throughput.py -n 48 --slots 16 --parallel 16 --skip hf   # a quick check

On a shared machine, compare rows of one run only: the load average is printed beside each, and
tokens per CPU-second (the engine's own CPU time; for the server, the server's plus the client's)
beside tokens per second of wall time, since a loaded machine stretches wall time unevenly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synth.llm import SamplingParams  # noqa: E402

GROUPS = ("self_instruct/tasks", "self_instruct/classify", "self_instruct/instances",
          "evol_instruct/evolve", "evol_instruct/respond", "code_inputs")  # fmt: skip


# ---------------------------------------------------------------- the requests


def stage_config(pipeline: str, kind: str) -> dict:
    """A stage's settings in a shipped pipeline, without its `resources`; {} (the stage's defaults)
    where the pipeline has no such stage (instruct.yaml ships without Evol-Instruct)."""
    spec = yaml.safe_load((ROOT / "pipelines" / pipeline).read_text())
    stage = next((s for s in spec["stages"] if s["kind"] == kind), {})
    return {k: v for k, v in stage.items() if k != "resources"}


def workload(n: int, seed: int = 0) -> list[tuple[str, list, SamplingParams]]:
    """(group, requests, sampling) for n requests split evenly over the stage prompts."""
    from generators.code.inputs import STOP, CodeInputs, CodeInputsConfig
    from generators.instruct.evol_instruct import EvolInstructConfig, evolve_request, prompt_of
    from generators.instruct.prompts import JUDGE, Sampling, few_shot_request, user_request
    from generators.instruct.self_instruct import Bootstrapper, SelfInstructConfig, load_seed_tasks

    seeds_path = ROOT / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"
    seeds = load_seed_tasks(seeds_path)
    si = stage_config("instruct.yaml", "self_instruct")
    si_config = SelfInstructConfig.model_validate({**si, "seed_tasks": seeds_path})
    ctx = SimpleNamespace(stage_seed=seed, run_id="bench", seed=seed, llm_specs={})
    boot = Bootstrapper(si_config, ctx, SimpleNamespace(model_id="bench"), seeds)
    evol = EvolInstructConfig.model_validate(stage_config("instruct.yaml", "evol_instruct"))
    code = CodeInputsConfig.model_validate(stage_config("code.yaml", "code_inputs"))

    sizes = [n // len(GROUPS) + (i < n % len(GROUPS)) for i in range(len(GROUPS))]
    records = [{"instruction": s.instruction, "input": s.instances[0][0]} for s in seeds]
    shots = classify_shots(boot)
    ops = list(evol.operations)
    functions = code_functions(sizes[5], seed)
    stage = CodeInputs.__new__(CodeInputs)  # its request reads only its config
    stage.config = code
    params = lambda sampling, step: sampling.params(seed + step)  # noqa: E731
    return [
        (GROUPS[0], task_requests(boot, sizes[0]), params(si_config.task_sampling, 0)),
        (GROUPS[1], [few_shot_request("self_instruct_classify", shots, {"instruction": seeds[i % len(seeds)].instruction})
                     for i in range(sizes[1])], params(JUDGE, 1)),
        (GROUPS[2], [boot._instance_request(seeds[i % len(seeds)].instruction, seeds[i % len(seeds)].is_classification)
                     for i in range(sizes[2])], params(si_config.instance_sampling, 2)),
        (GROUPS[3], [evolve_request(records[i % len(records)], ops[i % len(ops)], random.Random(i))
                     for i in range(sizes[3])], params(evol.evolve_sampling, 3)),
        (GROUPS[4], [user_request(prompt_of(records[i % len(records)])) for i in range(sizes[4])],
         params(evol.response_sampling, 4)),
        (GROUPS[5], [stage.request(f) for f in functions],
         params(Sampling(**code.sampling.model_dump()), 5).model_copy(update={"stop": STOP})),
    ]  # fmt: skip


def task_requests(boot, count: int) -> list:
    """Self-Instruct's requests for new tasks, as a round sends them (one at a time in older versions)."""
    if hasattr(boot, "task_requests"):
        return [request for request, _ in boot.task_requests(count)]
    return [boot._task_request()[0] for _ in range(count)]


def classify_shots(boot) -> list:
    """Self-Instruct's few-shot examples for the Yes/No question (drawn once, at start, since the
    balanced set; some earlier versions drew them per call, with or without an rng)."""
    if hasattr(boot, "classify_shots"):
        return boot.classify_shots
    try:
        return boot._classify_shots()
    except TypeError:
        return boot._classify_shots(random.Random(0))


def code_functions(n: int, seed: int) -> list[dict]:
    """n standard-library functions, as the code_functions stage picks them."""
    from generators.code.corpus import CodeFunctionsConfig, corpus_table

    sample = corpus_table(CodeFunctionsConfig(python=sys.executable, max_functions=max(n, 1)), seed)
    rows = [r for r in sample.table.to_pylist() if r.get("_drop_reason") is None]
    return rows[:n]


# ---------------------------------------------------------------- one configuration, in a child


@dataclass
class Result:
    name: str
    requests: int
    tokens: int
    seconds: float
    cpu_seconds: float
    peak_mb: float
    load: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.tokens / self.cpu_seconds

    def line(self) -> str:
        return (f"{self.name:<34} {self.requests:>5} req {self.tokens:>7} tok {self.seconds:>8.1f} s "
                f"{self.rate:>8.1f} tok/s {self.cpu_rate:>7.1f} tok/cpu-s {self.requests / self.seconds:>6.2f} req/s "
                f"peak {self.peak_mb:>6.0f} MB  load {self.load:.1f}")  # fmt: skip


def run_groups(generate, groups, cpu=time.process_time) -> dict:
    """Run each group through `generate(requests, sampling) -> completions`: requests, tokens,
    seconds of wall time and CPU-seconds (`cpu()`: the clock of the process that computes)."""
    start, cpu_start, requests, tokens = time.perf_counter(), cpu(), 0, 0
    for _, batch, sampling in groups:
        out = generate(batch, sampling)
        requests += len(out)
        tokens += sum(c.completion_tokens for c in out)
    return dict(requests=requests, tokens=tokens, seconds=time.perf_counter() - start, cpu_seconds=cpu() - cpu_start)


def child_local(args, groups) -> dict:
    from synth.llm import make_backend
    from synth.spec import LLMSpec

    spec = LLMSpec(batch_size=args.slots, threads=args.threads, engine=args.engine)
    backend = make_backend(spec)
    backend.load()
    backend.generate(groups[0][1][:1], SamplingParams(max_tokens=2))  # warm up
    return run_groups(backend.generate, groups) | dict(peak_mb=own_peak_mb())


def child_server(args, groups) -> dict:
    from synth.llm.models import embedded_gguf
    from synth.llm.openai import OpenAIClient
    from synth.spec import LLMSpec

    binary = Path(args.server_bin)
    if not binary.is_file():
        raise SystemExit(f"{binary}: llama-server not built (run scripts/setup.sh)")
    per_slot = max(len(json.dumps(r)) // 2 for _, batch, _ in groups for r in batch) + 512
    in_flight = max(len(b) for _, b, _ in groups)
    port = free_port()
    cmd = [str(binary), "-m", str(embedded_gguf()), "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(args.parallel), "-c", str(args.parallel * per_slot), "-t", str(args.threads),
           "-tb", str(args.threads), "--top-k", "0", "--min-p", "0", "--alias", "bench"]  # fmt: skip
    # The server logs every request: into a pipe nobody reads, it blocked once the pipe was full
    # and the run hung with every request in flight; a file keeps the log for an error message.
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_ready(server, port, log)
        spec = LLMSpec(backend="openai", model="bench", base_url=f"http://127.0.0.1:{port}/v1",
                       max_concurrency=in_flight, timeout_s=3600, max_retries=0)  # fmt: skip
        client = OpenAIClient(spec)
        client.generate(groups[0][1][:1], SamplingParams(max_tokens=2))  # warm up
        # The server's CPU time plus the client's: the same work an in-process engine is charged.
        clock = lambda: process_cpu_seconds(server.pid) + time.process_time()  # noqa: E731
        return run_groups(client.generate, groups, cpu=clock) | dict(peak_mb=process_peak_mb(server.pid))
    finally:
        server.kill()
        server.wait()
        log.close()


def child_hf(args, groups) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synth.llm.base import Completion
    from synth.llm.models import converted_embedded_model

    torch.set_num_threads(args.threads)
    folder = converted_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id

    @torch.inference_mode()
    def generate(requests, sampling: SamplingParams):
        out = []
        for start in range(0, len(requests), args.hf_batch):
            texts = [tokenizer.apply_chat_template(r, add_generation_prompt=True, tokenize=False)
                     for r in requests[start : start + args.hf_batch]]  # fmt: skip
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(sampling.seed)
            ids = model.generate(
                **enc, max_new_tokens=sampling.max_tokens, do_sample=sampling.temperature > 0,
                temperature=sampling.temperature or None, top_p=sampling.top_p if sampling.temperature else None,
                top_k=None, pad_token_id=tokenizer.pad_token_id or eos,
                stop_strings=list(sampling.stop) or None, tokenizer=tokenizer,
            )  # fmt: skip
            for row in ids[:, enc["input_ids"].shape[1] :].tolist():
                n = next((i for i, t in enumerate(row) if t == eos or t == tokenizer.pad_token_id), len(row))
                out.append(Completion(text="", prompt_tokens=0, completion_tokens=n))
        return out

    generate(groups[0][1][:1], SamplingParams(max_tokens=2))  # warm up
    return run_groups(generate, groups) | dict(peak_mb=own_peak_mb())


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server: subprocess.Popen, port: int, log, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"llama-server exited with {server.returncode}: {log.read().decode(errors='replace')[-1500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"llama-server on port {port} not ready after {timeout_s} s")


CHILDREN = {"local": child_local, "server": child_server, "hf": child_hf}


# ---------------------------------------------------------------- the parent


def measure(kind: str, name: str, args, **extra) -> Result | None:
    """Run one configuration in a child process; print its line at once."""
    cmd = [sys.executable, __file__, "--child", kind, "--requests-file", args.requests_file, "--threads", str(args.threads),
           "--hf-batch", str(args.hf_batch), "--server-bin", args.server_bin]  # fmt: skip
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name:<34} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", flush=True)
        return None
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    result = Result(name=name, load=os.getloadavg()[0], **data)
    print(result.line(), flush=True)
    return result


def table(ours: list[Result], peers: list[Result]) -> str:
    best = max(peers, key=lambda r: r.rate) if peers else None
    lines = [f"{'configuration':<34} {'tokens/s':>9} {'tok/cpu-s':>9} {'req/s':>7} {'last req s':>10} {'peak MB':>8} {'vs best peer':>12}"]
    for r in ours + peers:
        ratio = f"{r.rate / best.rate:.2f}x" if best else "-"
        lines.append(f"{r.name:<34} {r.rate:>9.1f} {r.cpu_rate:>9.1f} {r.requests / r.seconds:>7.2f} {r.seconds:>10.1f} "
                     f"{r.peak_mb:>8.0f} {ratio:>12}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=256, help="requests, split evenly over the six stage prompts")
    parser.add_argument("--slots", default="16,64", help="local backend slot counts (batch_size) to try")
    parser.add_argument("--parallel", default="1,4,16,64", help="llama-server --parallel values")
    parser.add_argument("--hf-batch", type=int, default=64, help="batch size of transformers' generate")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--skip", default="", help="comma-separated: llama.cpp, transformers (our engines), server, hf")
    parser.add_argument("--server-bin", default=str(Path(sys.executable).parent / "llama-server"))
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--requests-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_args = SimpleNamespace(**vars(args))
        child_args.slots = int(args.slots) if args.slots.isdigit() else 64
        child_args.parallel = int(args.parallel) if args.parallel.isdigit() else 1
        saved = json.loads(Path(args.requests_file).read_text())
        groups = [(g, requests, SamplingParams(**sampling)) for g, requests, sampling in saved]
        print(json.dumps(CHILDREN[args.child](child_args, groups)))
        return

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    groups = workload(args.n)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([(g, requests, sampling.model_dump(mode="json")) for g, requests, sampling in groups], f)
    args.requests_file = f.name
    print(f"{args.n} requests: " + ", ".join(f"{g} {len(b)} (max_tokens {s.max_tokens}, T {s.temperature})" for g, b, s in groups))
    print(f"threads {args.threads}; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    slots = [int(s) for s in args.slots.split(",") if s.strip()]
    ours: list[Result] = []
    peers: list[Result] = []
    for engine in ("llama.cpp", "transformers"):
        if engine not in skip:
            for n in slots:
                ours.append(measure("local", f"synth local {engine} slots {n}", args, slots=n, engine=engine))
    if "server" not in skip:
        for p in [int(s) for s in args.parallel.split(",") if s.strip()]:
            peers.append(measure("server", f"llama-server --parallel {p}", args, parallel=p))
    if "hf" not in skip:
        peers.append(measure("hf", f"transformers generate batch {args.hf_batch}", args))
    ours, peers = [r for r in ours if r], [r for r in peers if r]
    print(f"\nload average at end {os.getloadavg()[0]:.1f}\n")
    print(table(ours, peers))
    if ours and peers:
        best_ours, best_peer = max(ours, key=lambda r: r.rate), max(peers, key=lambda r: r.rate)
        print(f"\nours: {best_ours.name}; best peer: {best_peer.name}")
        print(f"ratio to best peer: {best_ours.rate / best_peer.rate:.2f}")
    Path(args.requests_file).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
