"""The shipped code pipeline, small, on part of the standard library: no written prompt holds its answer.

The corpus is five modules of the sandbox interpreter's standard library (code nobody here wrote)
whose functions have doctests with literal calls, so the fallback takes inputs from doctests and
the leak is there to be made. The model is off (`llm: null`): the inputs come from the fallback.
"""

from __future__ import annotations

import doctest
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

import filters.dedup.exact  # noqa: F401 - registers the stages
import filters.dedup.minhash  # noqa: F401
import filters.quality.code_checks  # noqa: F401
import filters.quality.heuristics  # noqa: F401
import generators.code.corpus  # noqa: F401
import generators.code.coverage  # noqa: F401
import generators.code.load_check  # noqa: F401
import generators.code.execute  # noqa: F401
import generators.code.inputs  # noqa: F401
import generators.code.prompts  # noqa: F401
from generators.code.calls import CallError, format_call, parse_call
from generators.code.corpus import stdlib_folder
from synth.runner import run
from synth.run_spec import load_spec

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "code.yaml"
MODULES = ("pickle.py", "statistics.py", "difflib.py", "enum.py", "http/cookiejar.py")


@pytest.fixture(scope="module")
def result(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("code-stdlib")
    for module in MODULES:
        (root / "corpus" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stdlib_folder() / module, root / "corpus" / module)
    spec = yaml.safe_load(PIPELINE.read_text())
    spec.pop("ray")
    spec["output"] = str(root / "out")
    for stage in spec["stages"]:
        if stage["kind"] == "code_functions":
            stage["folder"] = str(root / "corpus")
        if stage["kind"] == "code_inputs":
            stage.update(llm=None, resources={"num_cpus": 0.5})
    (root / "code.yaml").write_text(yaml.safe_dump(spec))
    return run(load_spec(root / "code.yaml"))


def doctest_results(source: str, name: str) -> dict[str, str]:
    """Canonical call -> shown result, of the literal calls in the function's doctests."""
    found = {}
    for example in doctest.DocTestParser().get_examples(source):
        try:
            args, kwargs = parse_call(example.source, name)
        except CallError:
            continue
        found[format_call(name, args, kwargs)] = example.want.strip()
    return found


def test_no_written_prompt_holds_its_answer(result):
    rows = pads.dataset(str(result.output / "data")).to_table().to_pylist()
    from_doctests = [r for r in rows if r["model"] == "fallback:docstring"]
    assert any(r["format"] == "predict_output" for r in from_doctests), "the corpus must make the leak possible"
    for row in rows:
        prompt = row["instruction"]
        if row["format"] == "predict_output":
            assert ">>>" not in prompt, row["function_name"]
            shown = doctest_results(row["source"], row["function_name"]).get(row["input"])
            if shown is not None:  # the doctest's result line for this very call is not in the prompt
                assert shown not in [line.strip() for line in prompt.splitlines()], (row["input"], shown)
        else:
            assert row["response"] not in prompt
            assert ">>>" not in row["response"], "nor the answer: the prompt's examples come from the sandbox"
