"""generators.code.corpus: which functions are kept, why the others are not, and what `source` holds."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from generators.code.corpus import CodeFunctionsConfig, corpus_table, function_candidates, stdlib_folder

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
    table, _ = corpus_table(CodeFunctionsConfig(folder=folder / "json", max_functions=5), seed=0)
    kept = [r for r in table.to_pylist() if r["_drop_reason"] is None]
    assert 1 <= len(kept) <= 5
    assert {r["module"] for r in table.to_pylist()} <= {"json", "decoder", "encoder", "scanner", "tool"}


def test_sampling_is_seeded(tmp_path):
    (tmp_path / "m.py").write_text("\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(20)))
    config = CodeFunctionsConfig(folder=tmp_path, max_functions=5)

    def names(seed):
        table, not_sampled = corpus_table(config, seed)
        assert not_sampled == 15
        return table.column("name").to_pylist()

    assert names(1) == names(1) and names(1) != names(2)


def test_reads_a_parquet_of_code(tmp_path):
    path = tmp_path / "code.parquet"
    pq.write_table(pa.table({"code": ["def double(x):\n    return 2 * x\n", "not python ("]}), path)
    table, _ = corpus_table(CodeFunctionsConfig(parquet=path), seed=0)
    assert table.column("name").to_pylist() == ["double"]
    assert table.column("module").to_pylist() == ["code.parquet[0]"]


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
