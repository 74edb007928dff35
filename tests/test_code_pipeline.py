"""The code pipeline end to end on a small corpus, and the check that every output came from the sandbox.

The corpus holds one function per way to be kept or dropped; inputs come from the fallback alone
(`llm: null`), so the test needs no model. After the run, a sample of the written cases is
executed again, each on its own input alone, in a fresh sandbox: the outputs must match.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

import filters.dedup.exact  # noqa: F401 - registers the stages
import filters.quality.code_checks  # noqa: F401
import generators.code.corpus  # noqa: F401
import generators.code.coverage  # noqa: F401
import generators.code.execute  # noqa: F401
import generators.code.inputs  # noqa: F401
import generators.code.load_check  # noqa: F401
import generators.code.prompts  # noqa: F401
from generators.code.execute import ExecutionOptions, run_function
from generators.code.leaks import shown_source
from generators.code.records import CODE_SCHEMA
from synth.runner import run
from synth.sandbox import Sandbox
from synth.run_spec import load_spec

CORPUS = '''
import math
import random
import numpy
from mylib.text import normalise

_SEEN = {}


def hypot2(a: int, b: int) -> float:
    return math.sqrt(a * a + b * b)


def shout(text: str) -> str:
    """Upper-case and exclaim.

    >>> shout("hi")
    'HI!'
    """
    return text.upper() + "!"


def count_calls(key: str) -> int:
    _SEEN[key] = _SEEN.get(key, 0) + 1
    return _SEEN[key] * 100 + len(key)


def roll(n: int) -> int:
    return random.randint(0, 10**9) + n


def letters(text: str) -> set:
    return set(text + "xyz")


def constant(x):
    return 42


def fails(x):
    if x is None or x is not None:
        raise ValueError("never works")
    return x


def reads(path):
    with open(path) as f:
        return f.read()


def helper_user(x):
    return shout(x)


def spread(xs):
    return float(numpy.std(xs))


def tidy(text):
    return normalise(text).strip()
'''


@pytest.fixture(scope="module")
def result(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    (root / "corpus").mkdir()
    (root / "corpus" / "mathy.py").write_text(CORPUS)
    spec = {
        "name": "code-test", "seed": 3, "output": str(root / "out"),
        "stages": [
            {"kind": "code_functions", "folder": "corpus"},
            {"kind": "code_load_check"},
            {"kind": "code_inputs", "llm": None, "inputs_per_function": 6, "candidates_per_function": 12,
             "resources": {"num_cpus": 0.5}},
            {"kind": "code_coverage", "inputs_per_function": 6},
            {"kind": "code_execute"},
            {"kind": "code_checks"},
            {"kind": "code_determinism"},
            {"kind": "case2code"},
        ],
    }  # fmt: skip
    (root / "code.yaml").write_text(yaml.safe_dump(spec))
    return run(load_spec(root / "code.yaml"))


def test_every_function_is_kept_or_dropped_for_its_reason(result):
    drops = result.manifest.drops
    assert drops["code_functions"] == {"io": 1, "not_self_contained": 1}
    assert drops["code_load_check"] == {"load_error": 2}, "numpy and the function's own package are not in the sandbox"
    assert result.stages[2].rows_in == 7, "code_inputs never sees a function that cannot load"
    assert drops["code_checks"] == {"all_inputs_raise": 1, "too_few_cases": 1}, "constant: one call covers it all"
    assert drops["code_determinism"] == {"nondeterministic": 2}
    table = pads.dataset(str(result.output / "data")).to_table()
    assert set(table.column("function_name").to_pylist()) == {"hypot2", "shout", "count_calls"}
    card = (result.output / "README.md").read_text()
    assert "nondeterministic: 2" in card and "all_inputs_raise: 1" in card


def test_the_card_reports_inputs_by_source_and_the_cases_each_kept(result):
    card = (result.output / "README.md").read_text()
    counters = {s.name: s.counters for s in result.manifest.stages}["code_coverage"]
    assert counters["candidates_fallback:hypothesis"] > counters["chosen_fallback:hypothesis"] > 0
    assert f"chosen_fallback:hypothesis {counters['chosen_fallback:hypothesis']:g}" in card
    rows = pads.dataset(str(result.output / "data")).to_table().column("model").to_pylist()
    assert f"| `fallback:hypothesis` | {rows.count('fallback:hypothesis')} |" in card


def test_records_follow_the_schema(result):
    table = pads.dataset(str(result.output / "data")).to_table()
    assert table.schema.equals(CODE_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert {r["kind"] for r in rows} == {"code"} and {r["seed"] for r in rows} == {3}
    assert {r["model"] for r in rows} <= {"fallback:docstring", "fallback:hypothesis"}
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["example_inputs"][0] == r["input"] and r["example_outputs"][0] == r["output"]
        assert r["response"] in (shown_source(r["source"], r["function_name"]).strip(), r["output"])
    manifest = json.loads((result.output / "_manifest.json").read_text())
    assert manifest["records"] == len(rows)


def test_written_outputs_are_reproduced_by_a_fresh_sandbox_on_their_input_alone(result):
    """count_calls keeps state between calls: a case that saw an earlier call's state would fail here."""
    rows = pads.dataset(str(result.output / "data")).to_table().to_pylist()
    sample = random.Random(0).sample(rows, min(10, len(rows)))
    sandbox = Sandbox()  # a new one: nothing is shared with the run
    for row in sample:
        again = run_function(sandbox, row["source"], row["function_name"], [row["input"]], ExecutionOptions())
        assert again.status == "ok"
        assert (again.case_status[0], again.outputs[0]) == ("raised" if row["output_is_error"] else "ok", row["output"])


def test_the_shipped_pipeline_spec_validates():
    spec = load_spec(Path(__file__).resolve().parents[1] / "pipelines" / "code.yaml")
    kinds = [s.kind for s in spec.stages]
    assert kinds == ["code_functions", "minhash_dedup", "code_load_check", "code_inputs", "code_coverage",
                     "code_execute", "code_checks", "code_determinism", "case2code", "text_heuristics",
                     "exact_dedup"]  # fmt: skip
