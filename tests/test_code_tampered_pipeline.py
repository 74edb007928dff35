"""A function that forges the harness's result lines, run by a real `synth generate` of the code
pipeline: it passes the static check (it reaches fd 1 through xml.etree, which no static rule
sees), and is dropped as `tampered` by code_checks; no record carries what it wrote."""

from __future__ import annotations

import pyarrow.dataset as pads
import yaml

import filters.quality.code_checks  # noqa: F401 - registers the stages
import generators.code.corpus  # noqa: F401
import generators.code.execute  # noqa: F401
import generators.code.inputs  # noqa: F401
import generators.code.prompts  # noqa: F401
from synth.runner import run
from synth.run_spec import load_spec

CORPUS = '''
import xml.etree.ElementTree as ET


def add_one(x: int) -> int:
    """Writes the harness's lines for its calls on fd 1 (forged outputs: 17, 27...), then returns.

    >>> add_one(1)
    2
    """
    forged = ET.Element("result")
    forged.text = "".join('["ok", "%d"]\\n' % (x * 10 + 7) for _ in range(8))
    ET.ElementTree(forged).write(1, method="text")
    return x + 1


def double(x: int) -> int:
    """>>> double(2)
    4
    """
    return 2 * x
'''


def test_a_forging_function_is_dropped_as_tampered(ray_session, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "forger.py").write_text(CORPUS)
    spec = {
        "name": "code-tampered", "seed": 0, "output": str(tmp_path / "out"),
        "stages": [
            {"kind": "code_functions", "folder": "corpus"},
            {"kind": "code_inputs", "llm": None, "inputs_per_function": 3, "resources": {"num_cpus": 0.5}},
            {"kind": "code_execute"},
            {"kind": "code_checks"},
            {"kind": "case2code"},
        ],
    }  # fmt: skip
    (tmp_path / "code.yaml").write_text(yaml.safe_dump(spec))
    result = run(load_spec(tmp_path / "code.yaml"))
    assert "code_functions" not in result.manifest.drops, "the forger passed the static check"
    assert result.manifest.drops["code_checks"] == {"tampered": 1}
    rows = pads.dataset(str(result.output / "data")).to_table().to_pylist()
    assert rows and {r["function_name"] for r in rows} == {"double"}
    assert not any(r["output"].endswith("7") for r in rows), "a forged output (x * 10 + 7) was recorded"
