"""What the sandbox costs: bare subprocess vs bare bwrap vs our sandbox, per function, per case, end to end.

    .venv/bin/python bench/sandbox.py [--repeat 30] [--functions 120] [--inputs 8] [--rounds 5] [--parallel 2]

Prints, in one run (medians of `--repeat` starts):
1. bare subprocess: `true`, and the interpreter starting and exiting (`python -S -c pass`);
2. bare bwrap start: bwrap with only a read-only /usr running `true`; then our full sandbox
   (namespaces, mounts, prlimit) running `true`, and running `python -S -c pass`;
3. per function: the case harness on one function with one input, bare (a plain subprocess of
   the same interpreter) and in our sandbox; the difference is the sandbox's overhead per function;
4. per case: the extra time of one more input, from the same function with 1 and 65 inputs;
5. end to end: real standard-library functions with fallback inputs through `run_all` (one
   sandbox per function, `parallel` at a time): one run; with every function re-run under another
   hash seed; and as the pipeline does it, re-running only the functions `code_checks` keeps;
   medians of `--rounds` rounds, the two paths taking turns.
Sections 3 to 5 run twice, side by side: "before", with no seccomp filter (a one-instruction
allow-all program in its place) and the one-process harness of bench/baseline_harness.py, whose
function could forge its result lines; and "now", with the filter and the result channel.
Goals: under 10 ms overhead per function over a bare subprocess; over 1,000 cases/s on 2
cores. The machine's load average is printed: other work on the cores skews every number.
"""

from __future__ import annotations

import argparse
import contextlib
import marshal
import struct
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.quality.code_checks import CodeChecksConfig, drop_reason  # noqa: E402
from generators.code.calls import Signature, parse_call  # noqa: E402
from generators.code.corpus import STDLIB_SKIP, folder_modules, function_candidates, stdlib_folder  # noqa: E402
import generators.code.execute as execute  # noqa: E402
from generators.code.execute import HARNESS_PRELOAD, ExecutionOptions, run_all, run_function  # noqa: E402
from generators.code.inputs import function_node, signature_calls  # noqa: E402
from synth.sandbox.forkserver import ForkServer  # noqa: E402
from synth.sandbox import Sandbox  # noqa: E402

ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # seccomp: `return ALLOW`
BASELINE = (Path(__file__).parent / "baseline_harness.py").read_text()
FUNCTION = "import re\n\ndef slug(text, sep='-'):\n    return re.sub(r'[^a-z0-9]+', sep, text.lower()).strip(sep)\n"


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def bare_harness(python: str, calls: list[str]) -> None:
    payload = marshal.dumps((FUNCTION, "slug", [parse_call(c, "slug") for c in calls], 1.0, 300))
    subprocess.run([python, "-S", "-s", "-B", "-c", execute.harness_source()], input=payload, env={"PYTHONHASHSEED": "0"},
                   capture_output=True, check=True)  # fmt: skip


def stdlib_workload(count: int, inputs: int) -> list[dict]:
    rows = [r for name, text in folder_modules(stdlib_folder(), STDLIB_SKIP) for r in function_candidates(text, name)]
    kept = [r for r in rows if r["_drop_reason"] is None]
    random.Random(0).shuffle(kept)
    workload = []
    for row in kept[:count]:
        fn = function_node(row["source"], row["name"])
        calls = signature_calls(fn, Signature.of(fn), inputs, random.Random(row["function_id"]))
        if calls:
            workload.append({**row, "inputs": calls})
    return workload


def end_to_end(sandbox: Sandbox, workload: list[dict], options: ExecutionOptions) -> dict[str, float]:
    """Seconds for one run, for a re-run of every function, and as the pipeline does it."""
    started = time.perf_counter()
    runs = run_all(sandbox, workload, options, hash_seed=0)
    once = time.perf_counter() - started
    started = time.perf_counter()
    run_all(sandbox, workload, options, hash_seed=1)
    twice = once + time.perf_counter() - started
    # The pipeline re-runs only the functions code_checks keeps (most raise or return one constant).
    checks = CodeChecksConfig()
    passing = [row for row, run in zip(workload, runs)
               if drop_reason(run.status, run.case_status, run.outputs, checks) is None]  # fmt: skip
    started = time.perf_counter()
    run_all(sandbox, [{**row, "inputs": row["inputs"][::-1]} for row in passing], options, hash_seed=1)
    pipeline = once + time.perf_counter() - started
    return {"once": once, "twice": twice, "pipeline": pipeline, "kept": len(passing),
            "failed": sum(r.status != "ok" for r in runs)}  # fmt: skip


def print_end_to_end(name: str, rounds: list[dict[str, float]], functions: int, cases: int) -> None:
    """Medians over the rounds: this machine's speed drifts by a third within minutes."""
    once, twice, pipeline = (statistics.median(r[key] for r in rounds) for key in ("once", "twice", "pipeline"))
    last = rounds[-1]
    print(f"  {name:15s}   one run {cases / once:5.0f} cases/s ({once / functions * 1000:4.1f} ms/function, "
          f"{last['failed']:.0f} failed as a whole)   re-running every function {cases / twice:5.0f} cases/s")  # fmt: skip
    print(f"  {'':15s}   as the pipeline does (code_checks, then re-run the {last['kept']:.0f} functions it keeps) "
          f"{cases / pipeline:5.0f} cases/s (goal > 1000)")  # fmt: skip
    spread = [round(cases / r["pipeline"]) for r in rounds]
    print(f"  {'':15s}   as the pipeline does, each round: {spread}")


@contextlib.contextmanager
def _harness(source: str):
    """Runs use `source` as the case harness meanwhile."""
    original = execute.harness_source
    execute.harness_source = lambda: source
    try:
        yield
    finally:
        execute.harness_source = original


def per_function(sandbox: Sandbox, python: str, n: int) -> None:
    options = ExecutionOptions()
    one, many = ["slug('Hello, World!')"], [f"slug('Item number {i}!')" for i in range(65)]
    bare_one = median_ms(lambda: bare_harness(python, one), n)
    trusted = (execute.harness_source(),)
    with ForkServer(sandbox, env={"PYTHONHASHSEED": "0"}, preload=HARNESS_PRELOAD, trusted=trusted) as server:
        forked_py_ms = median_ms(lambda: server.run_python("pass"), n)
        print(f"forked sandbox:     python -c pass {forked_py_ms:6.1f} ms (from a zygote: no interpreter start)")
        print(f"per function:       bare harness {bare_one:6.1f} ms (a plain subprocess of the interpreter)")
        for name, runner in (("bwrap per run", sandbox), ("forked", server)):
            ours_one = median_ms(lambda r=runner: run_function(r, FUNCTION, "slug", one, options), n)
            ours_many = median_ms(lambda r=runner: run_function(r, FUNCTION, "slug", many, options), n)
            print(f"  {name:15s}   in our sandbox {ours_one:6.1f} ms   overhead {ours_one - bare_one:5.1f} ms "
                  f"(goal < 10)   per case {(ours_many - ours_one) / 64:5.2f} ms")  # fmt: skip


def end_to_end_rounds(variants: dict, workload: list[dict], cases: int, args) -> None:
    """Every round runs each variant on each path in turn, so drift in the machine's speed
    falls on all of them alike."""
    print(f"end to end:         {len(workload)} stdlib functions, {cases} cases, {args.parallel} sandboxes at a time, "
          f"medians of {args.rounds} rounds (variants and paths take turns)")  # fmt: skip
    paths = {"bwrap per run": False, "forked": True}
    rounds: dict[tuple, list] = {(v, p): [] for v in variants for p in paths}
    for _ in range(args.rounds):
        for variant, (box, harness) in variants.items():
            with _harness(harness):
                for name, fork_server in paths.items():
                    options = ExecutionOptions(parallel=args.parallel, fork_server=fork_server)
                    rounds[variant, name].append(end_to_end(box, workload, options))
    for variant in variants:
        print(f"--- {variant}")
        for name in paths:
            print_end_to_end(name, rounds[variant, name], len(workload), cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--functions", type=int, default=120)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="End-to-end rounds per path (medians)")
    parser.add_argument("--parallel", type=int, default=ExecutionOptions().parallel, help="Sandboxes at a time")
    args = parser.parse_args()
    sandbox = Sandbox()
    python, n = sandbox.python, args.repeat
    print(f"interpreter {python}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")

    true_ms = median_ms(lambda: subprocess.run(["/usr/bin/true"], check=True), n)
    py_ms = median_ms(lambda: subprocess.run([python, "-S", "-c", "pass"], check=True), n)
    minimal = [sandbox.bwrap, "--ro-bind", "/usr", "/usr", *sandbox.binds[3:], "--", "/usr/bin/true"]
    bwrap_ms = median_ms(lambda: subprocess.run(minimal, check=True, env={}), n)
    ours_true_ms = median_ms(lambda: sandbox.run(["/usr/bin/true"]), n)
    ours_py_ms = median_ms(lambda: sandbox.run_python("pass"), n)
    print(f"bare subprocess:    true {true_ms:6.1f} ms   python -S -c pass {py_ms:6.1f} ms")
    print(f"bare bwrap start:   true {bwrap_ms:6.1f} ms")
    print(f"our sandbox:        true {ours_true_ms:6.1f} ms   python -S -c pass {ours_py_ms:6.1f} ms")

    workload = stdlib_workload(args.functions, args.inputs)
    cases = sum(len(r["inputs"]) for r in workload)
    unfiltered = Sandbox()
    unfiltered.seccomp = ALLOW_ALL
    variants = {"before": (unfiltered, BASELINE), "now": (sandbox, execute.harness_source())}
    for variant, (box, harness) in variants.items():
        with _harness(harness):
            print(f"--- {variant}: " + ("no seccomp filter, one-process harness (bench/baseline_harness.py)"
                                       if variant == "before" else "seccomp filter and result channel"))  # fmt: skip
            per_function(box, python, n)
    end_to_end_rounds(variants, workload, cases, args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
