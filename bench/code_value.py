"""What the code data is worth: output prediction on held-out functions, before and after fine-tuning on it.

In the style of CRUXEval-O: the model sees a function and one call, and must give the call's
output; an answer counts when it is exactly the output the sandbox recorded (compared as Python
literals, so `"a"` and `'a'` are the same answer). Steps:

1. The dataset's functions are split by a hash of `function_id` and `--seed`: `--held-out` of them
   are never trained on; their cases whose output is a value (not an exception) are the eval set,
   up to `--per-function` each, `--eval` in all.
2. The embedded model (or `--model`) is fine-tuned with the training stage (`synth.train`) on every
   record of the other functions, all prompt formats.
3. The base and the fine-tuned model answer the same prompts greedily; exact match is printed side
   by side, with the count of each, beside a baseline that answers with the call's first argument.

    .venv/bin/python bench/code_value.py --data output/code                  # a code pipeline's output
    .venv/bin/python bench/code_value.py --data output/code --steps 600 --eval 300
"""

from __future__ import annotations

import argparse
import ast
import logging
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import xxhash

from generators.code.leaks import shown_source
from generators.code.prompts import render
from generators.instruct.prompts import user_request
from synth.llm import make_backend
from synth.llm.base import SamplingParams
from synth.spec import LLMSpec
from synth.train import TrainSpec, run_training


def main() -> None:
    args = _arguments()
    logging.basicConfig(level=logging.WARNING)
    table = pads.dataset(str(Path(args.data) / "data"), format="parquet").to_table()
    held = {f for f in set(table.column("function_id").to_pylist()) if _held_out(f, args.seed, args.held_out)}
    rows = table.to_pylist()
    train_rows = [r for r in rows if r["function_id"] not in held]
    items = eval_items([r for r in rows if r["function_id"] in held], args.per_function, args.eval)
    print(f"data {args.data}: {len(rows)} records of {len(set(r['function_id'] for r in rows))} functions; "
          f"trained on {len(train_rows)} records of the others, evaluated on {len(items)} cases of "
          f"{len(held)} held-out functions")  # fmt: skip
    if not items or not train_rows:
        raise SystemExit("nothing to train on or to evaluate: a larger dataset or another --held-out is needed")
    with tempfile.TemporaryDirectory(prefix="code-value-") as tmp:
        data_dir = Path(tmp) / "train-data"
        data_dir.mkdir()
        pq.write_table(pa.Table.from_pylist(train_rows, schema=table.schema), data_dir / "part-000000.parquet")
        started = time.perf_counter()
        before = answers(args.model, items, args)
        print(f"before: {_correct(before, items)} of {len(items)} exact ({time.perf_counter() - started:.0f} s); "
              "training", flush=True)  # fmt: skip
        model = run_training(_train_spec(args, data_dir, Path(tmp) / "train"))
        trained_s = time.perf_counter() - started
        after = answers(str(model), items, args)
    for (prompt, expected), old, new in list(zip(items, before, after))[: args.show]:
        call = prompt.strip().splitlines()[-1]
        print(f"{call[:70]}\n  expected {expected[:60]!r}\n  before   {old.strip()[:60]!r}\n  after    {new.strip()[:60]!r}")
    print(f"{'':24}{'exact match':>14}{'correct':>10}")
    copies = [first_argument(prompt) for prompt, _ in items]
    for name, texts in ((f"before ({args.model})", before), ("after fine-tuning", after), ("first argument", copies)):
        correct = _correct(texts, items)
        print(f"{name:24}{correct / len(items):>14.3f}{correct:>10}")
    print(f"({args.steps} steps of up to {args.batch_size} x {args.seq_len} tokens; {trained_s:.0f} s with both evals)")


def _held_out(function_id: str, seed: int, fraction: float) -> bool:
    return xxhash.xxh64_intdigest(f"{seed}/{function_id}".encode()) % 10_000 < fraction * 10_000


def eval_items(rows: list[dict], per_function: int, limit: int) -> list[tuple[str, str]]:
    """(prompt, expected output) per held-out case with a value as output, in a stable order."""
    seen: dict[tuple[str, str], str] = {}
    by_function: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: (r["function_id"], r["input"])):
        key = (row["function_id"], row["input"])
        if row["output_is_error"] or key in seen or by_function.get(row["function_id"], 0) >= per_function:
            continue
        by_function[row["function_id"]] = by_function.get(row["function_id"], 0) + 1
        source = shown_source(row["source"], row["function_name"]).strip()
        seen[key] = render("predict_output", source=source, call=row["input"]), row["output"]
    return list(seen.values())[:limit]


def same_answer(text: str, expected: str) -> bool:
    """Whether a model's answer is the expected output: its first line, as a Python literal."""
    lines = [line.strip().strip("`").strip() for line in text.strip().removeprefix("```python").splitlines()]
    answer = next((line for line in lines if line and not line.startswith("```")), "")
    if answer == expected:
        return True
    try:
        return repr(ast.literal_eval(answer)) == expected
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def answers(model: str, items: list[tuple[str, str]], args: argparse.Namespace) -> list[str]:
    """The model's greedy answer to each item's prompt."""
    spec = LLMSpec(backend="local", model=None if model == "embedded" else model, threads=args.threads,
                   batch_size=args.gen_batch, cache=False)  # fmt: skip
    client = make_backend(spec)
    completions = client.generate([user_request(p) for p, _ in items], SamplingParams(max_tokens=48, temperature=0))
    return [c.text for c in completions]


def first_argument(prompt: str) -> str:
    """A baseline answer: the call's first argument, as written (many functions return it as is)."""
    call = prompt.strip().splitlines()[-1].removeprefix("Call: ").strip("`")
    try:
        node = ast.parse(call, mode="eval").body
        return ast.unparse(node.args[0]) if isinstance(node, ast.Call) and node.args else ""
    except SyntaxError:
        return ""


def _correct(texts: list[str], items: list[tuple[str, str]]) -> int:
    return sum(same_answer(text, expected) for text, (_, expected) in zip(texts, items))


def _train_spec(args: argparse.Namespace, data: Path, output: Path) -> TrainSpec:
    return TrainSpec.model_validate({
        "name": "code-value", "seed": args.seed, "output": str(output), "model": {"base": args.model},
        "data": {"path": str(data), "eval_fraction": 0.05, "eval_sequences": 8}, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "micro_batch_size": 1, "steps": args.steps, "lr": args.lr,
        "warmup_steps": max(1, args.steps // 20), "eval_every": max(1, args.steps // 4),
        "checkpoint_every": args.steps, "log_every": max(1, args.steps // 10),
        "resources": {"threads": args.threads},
    })  # fmt: skip


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a synth code dataset (the output folder of pipelines/code.yaml)")
    parser.add_argument("--model", default="embedded", help="embedded, or a local Hugging Face model folder")
    parser.add_argument("--held-out", type=float, default=0.2, help="fraction of functions never trained on")
    parser.add_argument("--per-function", type=int, default=3, help="eval cases per held-out function, at most")
    parser.add_argument("--eval", type=int, default=200, help="eval cases, at most")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024, help="above the longest prompt of the dataset")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen-batch", type=int, default=16, help="sequences generated together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=4, help="eval cases printed with both answers")
    return parser.parse_args()


if __name__ == "__main__":
    main()
