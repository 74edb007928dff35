"""generators.code.corpus: which functions are kept, why the others are not, and what `source` holds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from generators.code.corpus import CodeFunctionsConfig, corpus_error, corpus_table, function_candidates, stdlib_folder
from synth.errors import SpecError
from synth.runner import run
from synth.run_spec import load_spec

MODULE = '''
import os
import re as regex
from math import sqrt, pi
from os.path import exists
from . import sibling

_WORD = regex.compile(r"\\w+")
SCALE = 2 * pi

def words(text):
    return _WORD.findall(text)

def area(r):
    return SCALE * r * r / 2

def norm(x, y):
    return sqrt(x * x + y * y)

def stem(path):
    return os.path.splitext(os.path.basename(path))[0]

def reads(path):
    with open(path) as f:
        return f.read()

def lists(folder):
    return os.listdir(folder)

def checks(path):
    return exists(path)

def says(x):
    print(x)
    return x

def spawns(cmd):
    import subprocess
    return subprocess.run(cmd).returncode

def uses_helper(x):
    return words(x)

def uses_sibling(x):
    return sibling.f(x)

def nothing():
    return 1

def no_value(x):
    x.append(1)

def gen(n):
    yield n

async def later(x):
    return x

@staticmethod
def decorated(x):
    return x

def long(x):
''' + "    x += 1\n" * 40 + "    return x\n"


def candidates() -> dict[str, dict]:
    return {row["name"]: row for row in function_candidates(MODULE, "sample", max_lines=30)}


def test_keeps_self_contained_pure_functions_with_their_imports_and_constants():
    rows = candidates()
    kept = {name for name, row in rows.items() if row["_drop_reason"] is None}
    assert kept == {"words", "area", "norm", "stem"}
    assert rows["words"]["source"] == (
        'import re as regex\n_WORD = regex.compile(r"\\w+")\n\ndef words(text):\n    return _WORD.findall(text)\n'
    )
    assert rows["area"]["source"].startswith("from math import pi\nSCALE = 2 * pi\n\ndef area(r):")
    assert rows["norm"]["source"].startswith("from math import sqrt\n\ndef norm")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("reads", "io"), ("lists", "io"), ("checks", "io"), ("says", "io"), ("spawns", "io"),
        ("uses_helper", "not_self_contained"), ("uses_sibling", "not_self_contained"),
        ("nothing", "no_arguments"), ("no_value", "no_return_value"), ("gen", "generator"),
        ("later", "async"), ("decorated", "decorated"), ("long", "too_long"),
    ],
)  # fmt: skip
def test_rejects_with_a_reason(name, reason):
    assert candidates()[name]["_drop_reason"] == reason


def test_every_kept_source_runs_on_its_own():
    for row in candidates().values():
        if row["_drop_reason"] is None:
            namespace: dict = {}
            exec(compile(row["source"], "<test>", "exec"), namespace)  # noqa: S102 - our own fixture code
            assert callable(namespace[row["name"]])


def test_the_stdlib_default_yields_hundreds_of_candidates():
    folder = stdlib_folder()
    assert (folder / "textwrap.py").is_file()
    table = corpus_table(CodeFunctionsConfig(folder=folder / "json", max_functions=5), seed=0).table
    kept = [r for r in table.to_pylist() if r["_drop_reason"] is None]
    assert 1 <= len(kept) <= 5
    assert {r["module"] for r in table.to_pylist()} <= {"json", "decoder", "encoder", "scanner", "tool"}


def test_sampling_is_seeded(tmp_path):
    (tmp_path / "m.py").write_text("\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(20)))
    config = CodeFunctionsConfig(folder=tmp_path, max_functions=5)

    def names(seed):
        sample = corpus_table(config, seed)
        assert sample.not_sampled == 15
        return sample.table.column("name").to_pylist()

    assert names(1) == names(1) and names(1) != names(2)


def test_reads_a_parquet_of_code(tmp_path):
    path = tmp_path / "code.parquet"
    pq.write_table(pa.table({"code": ["def double(x):\n    return 2 * x\n", "not python ("]}), path)
    sample = corpus_table(CodeFunctionsConfig(parquet=path), seed=0)
    assert sample.table.column("name").to_pylist() == ["double"]
    assert sample.source.counters() == {"files_read": 1, "files_skipped_syntax_error": 1}
    assert sample.table.column("module").to_pylist() == ["code.parquet[0]"]


def test_a_parquet_without_the_column_says_which_it_has(tmp_path):
    path = tmp_path / "code.parquet"
    pq.write_table(pa.table({"text": ["x"]}), path)
    with pytest.raises(Exception, match="no column 'code' .*columns: text.*code_column"):
        corpus_table(CodeFunctionsConfig(parquet=path), seed=0)


def test_line_numbers_survive_form_feeds():
    text = "X = 1\n\x0c\n# a section\ndef f(a):\n    return a + X\n"
    (row,) = function_candidates(text, "m")
    assert row["source"] == "X = 1\n\ndef f(a):\n    return a + X\n"


def test_globals_the_function_assigns_come_along():
    text = (
        "import re\n_prog = None\n\ndef match(s):\n    global _prog\n"
        "    if _prog is None:\n        _prog = re.compile('a+')\n    return bool(_prog.match(s))\n"
    )
    (row,) = function_candidates(text, "m")
    assert row["_drop_reason"] is None and row["source"].startswith("import re\n_prog = None\n\ndef match")


@pytest.mark.parametrize(
    ("body", "io"),
    [
        ("import urllib.parse\ndef f(u):\n    return urllib.parse.quote(u)\n", False),
        ("from urllib.request import urlopen\ndef f(u):\n    return urlopen(u).read()\n", True),
        ("import io\ndef f(s):\n    return io.StringIO(s).getvalue()\n", False),
        ("import io\ndef f(p):\n    return io.open(p).read()\n", True),
        ("import os.path\ndef f(p):\n    return os.path.exists(p)\n", True),
        ("from os import path\ndef f(p):\n    return path.join(p, 'x')\n", False),
        ("from os import path\ndef f(p):\n    return path.isfile(p)\n", True),
        ("import sys\ndef f(x):\n    return sys.maxsize > x\n", False),
        ("import sys\ndef f(x):\n    return sys.stdout.write(x)\n", True),
    ],
)  # fmt: skip
def test_io_check_tells_pure_parts_of_mixed_modules_from_io(body, io):
    (row,) = function_candidates(body, "m")
    assert (row["_drop_reason"] == "io") is io, row["_drop_reason"]


GOOD = "def double(x):\n    return 2 * x\n"


def bad_files(folder: Path) -> None:
    """One good file and three that are not Python source, and one Latin-1 file that declares it."""
    folder.mkdir()
    (folder / "good.py").write_text(GOOD)
    (folder / "broken.py").write_text("def half(x:\n    return x / 2\n")
    (folder / "blob.py").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    (folder / "latin.py").write_bytes("def greet(name):\n    return 'Grüße, ' + name\n".encode("latin-1"))
    declared = "# -*- coding: latin-1 -*-\ndef ole(s):\n    return s + 'é'\n"
    (folder / "declared.py").write_bytes(declared.encode("latin-1"))


def test_skipped_files_are_counted_per_reason(tmp_path):
    bad_files(tmp_path / "corpus")
    sample = corpus_table(CodeFunctionsConfig(folder=tmp_path / "corpus"), seed=0)
    assert sorted(sample.table.column("name").to_pylist()) == ["double", "ole"]
    assert sample.source.files == 5
    assert sample.source.counters() == {"files_read": 2, "files_skipped_binary": 1, "files_skipped_encoding": 1,
                                        "files_skipped_syntax_error": 1}  # fmt: skip


def run_functions_only(tmp_path: Path, folder: Path):
    spec = {"name": "corpus", "seed": 0, "output": str(tmp_path / "out"),
            "stages": [{"kind": "code_functions", "folder": str(folder)}]}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return run(load_spec(tmp_path / "spec.yaml"))


def test_the_manifest_and_card_report_skipped_files(ray_session, tmp_path):
    bad_files(tmp_path / "corpus")
    result = run_functions_only(tmp_path, tmp_path / "corpus")
    counters = result.manifest.stages[0].counters
    assert counters["files_read"] == 2 and counters["files_skipped_syntax_error"] == 1
    assert counters["files_skipped_binary"] == 1 and counters["files_skipped_encoding"] == 1
    card = (result.output / "README.md").read_text()
    assert "5 files, 2 read as Python, 3 skipped" in card
    assert "not valid Python: 1" in card and "binary (NUL bytes): 1" in card


def test_an_empty_corpus_says_it_is_empty(ray_session, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.txt").write_text("no Python here")
    with pytest.raises(SpecError, match="the corpus is empty: no Python source in the folder"):
        run_functions_only(tmp_path, tmp_path / "corpus")


def test_a_corpus_of_bad_files_says_why_none_was_read(tmp_path):
    bad_files(tmp_path / "corpus")
    for name in ("good.py", "declared.py"):
        (tmp_path / "corpus" / name).unlink()
    sample = corpus_table(CodeFunctionsConfig(folder=tmp_path / "corpus"), seed=0)
    assert "none of the 3 files" in corpus_error(sample) and "not valid Python: 1" in corpus_error(sample)
