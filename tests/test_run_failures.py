"""Runs that fail clearly: what the user sees when input is bad or a stage has a bug.

Input errors are found before Ray starts and leave nothing in the output folder; errors raised
inside Ray workers come back as the stage's own line; a bug's traceback goes to a log file.
Real runner, real Ray (the shared session, and one `python -m synth` run with its own).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stages_for_tests  # noqa: F401 - registers the test stages
import stages_that_fail  # noqa: F401
from synth.errors import BugError, SpecError, SynthError
from synth.runner import run
from synth.run_spec import load_spec

TESTS = Path(__file__).resolve().parent
SEEDS = TESTS.parent / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"


def write_spec(tmp_path: Path, stages: list[dict], name: str = "spec") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": "failures", "seed": 3, "output": str(tmp_path / "out"),
                                    "stages": stages}))  # fmt: skip
    return path


def numbers_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# ---------------------------------------------------------------- before Ray


def test_an_undefined_llm_name_is_one_line_before_ray_and_leaves_no_output(tmp_path):
    spec = load_spec(write_spec(tmp_path, [{"kind": "self_instruct", "seed_tasks": str(SEEDS), "llm": "big"}]))
    with pytest.raises(SpecError) as failure:
        run(spec)
    assert str(failure.value) == ("stage 'self_instruct': llm: 'big' is not defined in the spec's `llm:` section "
                                  "(defined: default)")
    assert not (tmp_path / "out").exists()


def test_a_bad_seed_line_fails_before_ray_naming_file_and_line(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(SEEDS.read_text().splitlines()[0] + "\n" + '{"instruction": "x", "instances": []}\n')
    spec = load_spec(write_spec(tmp_path, [{"kind": "self_instruct", "seed_tasks": str(seeds)}]))
    with pytest.raises(SpecError, match=rf"^{seeds}:2: instances: "):
        run(spec)
    assert not (tmp_path / "out").exists()


def test_an_llm_server_that_refuses_connections_is_one_line_before_ray(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_spec(tmp_path, [{"kind": "self_instruct", "seed_tasks": str(SEEDS)}])
    data = yaml.safe_load(path.read_text())
    data["llm"] = {"default": {"backend": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1"}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SynthError, match=rf"^llm 'default': no server answers at http://127.0.0.1:{port}/v1/models"):
        run(load_spec(path))
    assert not (tmp_path / "out").exists()


def test_a_failed_check_leaves_nothing_so_the_fixed_spec_runs_into_the_same_folder(ray_session, tmp_path):
    numbers = numbers_file(tmp_path, ["1", "2", "three"])
    spec = load_spec(write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)},
                                           {"kind": "test_drop_multiples", "of": 2}]))  # fmt: skip
    with pytest.raises(SpecError, match=r"numbers.txt:3: expected a whole number, got 'three'"):
        run(spec)
    assert not (tmp_path / "out").exists()

    numbers_file(tmp_path, ["1", "2", "3"])
    fixed = load_spec(write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)},
                                            {"kind": "test_drop_multiples", "of": 3}]))  # fmt: skip
    assert run(fixed).manifest.records == 2


# ---------------------------------------------------------------- fingerprints cover file content


def test_editing_an_input_file_in_place_reruns_its_stage_and_the_ones_after(ray_session, tmp_path):
    numbers = numbers_file(tmp_path, ["1", "2", "3", "4"])
    spec = load_spec(write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)},
                                           {"kind": "test_drop_multiples", "of": 2}]))  # fmt: skip
    run(spec, until_stage=1)

    resumed = run(spec, until_stage=1)
    assert [r.resumed for r in resumed.stages] == [True, True]

    numbers_file(tmp_path, ["1", "2", "3", "4", "5", "7"])  # same spec text, new content
    edited = run(spec)
    assert [r.resumed for r in edited.stages] == [False, False]
    assert [r.kept for r in edited.stages] == [6, 4]
    assert edited.manifest.inputs["test_numbers_file"].keys() == {str(numbers)}


# ---------------------------------------------------------------- errors raised in Ray workers


def test_bad_input_raised_in_a_ray_worker_is_the_stages_own_line(ray_session, tmp_path):
    numbers = numbers_file(tmp_path, ["5", "6"])
    spec = load_spec(write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)},
                                           {"kind": "test_fail_in_worker", "error": "input"}]))  # fmt: skip
    with pytest.raises(SynthError) as failure:
        run(spec)
    assert str(failure.value) == "stage 'test_fail_in_worker': row 5: the stage cannot use this record"


def test_a_bug_in_a_ray_worker_is_one_line_naming_the_log_with_its_traceback(ray_session, tmp_path):
    numbers = numbers_file(tmp_path, ["5", "6"])
    spec = load_spec(write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)},
                                           {"kind": "test_fail_in_worker", "error": "bug"}]))  # fmt: skip
    with pytest.raises(BugError) as failure:
        run(spec)
    line = str(failure.value)
    assert "\n" not in line
    assert line.startswith("stage 'test_fail_in_worker' failed: ZeroDivisionError: division by zero (a bug; "
                           "the traceback is in ")
    log = Path(line.rsplit("the traceback is in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "out" / "_logs"
    assert "return batch.append_column(\"ratio\"" in log.read_text()


def test_an_interpreter_error_ends_its_worker_and_the_unit_is_retried_in_a_fresh_one(ray_session, tmp_path):
    # SystemError means the process itself is broken (CI once met one from a freed method
    # definition in a reused worker); the unit must not fail the run as a bug of the stage.
    numbers = numbers_file(tmp_path, ["1", "2", "3"])
    marker = tmp_path / "once"
    marker.touch()
    path = write_spec(tmp_path, [
        {"kind": "test_numbers_file", "path": str(numbers)},
        {"kind": "test_interpreter_error_once", "marker": str(marker), "resources": {"batch_size": 1}},
    ])
    result = run(load_spec(path))
    assert not marker.exists()  # the error was raised
    assert result.manifest.records == 3


# ---------------------------------------------------------------- LLM calls paid by an attempt that failed


def test_calls_paid_by_a_failed_attempt_count_as_paid_in_the_resumed_runs_manifest(ray_session, tmp_path):
    numbers = numbers_file(tmp_path, ["5", "6", "7"])
    marker = tmp_path / "fail"
    marker.touch()
    path = write_spec(tmp_path, [
        {"kind": "test_numbers_file", "path": str(numbers)},
        {"kind": "test_ask_llm", "fail_marker": str(marker), "fail_on": 7, "resources": {"batch_size": 1}},
    ])
    data = yaml.safe_load(path.read_text())
    data["llm"] = {"default": {"backend": "local", "batch_size": 2, "threads": 1}}  # the embedded SmolLM2
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    with pytest.raises(BugError, match="stopped after paying"):
        run(spec)
    paid_before = len(list((tmp_path / "out" / "_cache" / "llm").rglob("*.json")))
    assert paid_before >= 1

    marker.unlink()
    llm = run(spec).manifest.llm
    assert llm["llm_requests"] == 3
    assert llm["llm_backend_calls"] == 3  # every call this run paid for, in either attempt
    assert llm["llm_paid_by_earlier_attempts"] == paid_before
    assert llm["llm_cache_hits"] == 0
    assert llm["llm_completion_tokens"] > 0


START_FAILS = """
import synth.ray_session as rs
rs.RETRY_PAUSE_S = 0
tries = []
def start():
    tries.append(1)
    raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                    "failed to startup or the GCS has become overloaded.\\n(and 30 more lines)")
try:
    rs._start("start the embedded Ray", start)
except rs.SynthError as exc:
    print(len(tries), exc)
"""


def test_ray_start_up_is_tried_three_times_then_fails_in_one_line():
    # In a process of its own: a failed start shuts down whatever Ray the process has.
    done = subprocess.run([sys.executable, "-c", START_FAILS], capture_output=True, text=True, timeout=300,
                          check=True, env={**os.environ, "PYTHONPATH": str(TESTS.parent)})  # fmt: skip
    assert done.stdout.strip() == (
        "3 could not start the embedded Ray after 3 tries: Exception: The current node timed out during startup. "
        "This could happen because some of the raylet failed to startup or the GCS has become overloaded. (a busy "
        "machine makes Ray's start-up time out; try again, or start Ray once with `ray start --head` and pass "
        "--ray-address)")


# ---------------------------------------------------------------- the command line


def plugin_env(folder: Path) -> dict[str, str]:
    """An environment in which `python -m synth` finds the test stages through the entry point group."""
    dist = folder / "synth_failing_test_stages-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: synth-failing-test-stages\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[synth.stages]\nfailing = stages_that_fail\nnumbers = stages_for_tests\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(TESTS), str(TESTS.parent)]),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def synth_generate(spec: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synth", "generate", str(spec)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_the_cli_exits_2_for_bad_input_and_1_for_a_bug_with_one_line_each(tmp_path):
    env = plugin_env(tmp_path / "plugins")
    numbers = numbers_file(tmp_path, ["5", "6"])
    undefined = write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)},
                                      {"kind": "test_fail_in_worker", "llm": "judge"}], "undefined")  # fmt: skip
    done = synth_generate(undefined, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: stage 'test_fail_in_worker': llm: 'judge' is not defined in the spec's `llm:` section "
        "(defined: default)"]

    # One embedded Ray for the rest, with its dashboard: its address is printed, its workers run
    # at this process's priority, then a bug fails.
    env["SYNTH_RAY_DASHBOARD"] = "1"
    buggy = write_spec(tmp_path, [{"kind": "test_numbers_file", "path": str(numbers)}, {"kind": "test_niceness"},
                                  {"kind": "test_fail_in_worker", "error": "bug"}], "buggy")  # fmt: skip
    done = synth_generate(buggy, env)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage 'test_fail_in_worker' failed: ZeroDivisionError: division by zero")
    assert "Traceback" not in done.stderr
    assert re.search(r"^Ray dashboard: http://127\.0\.0\.1:\d+ ", done.stderr, re.MULTILINE), done.stderr
    assert done.stderr.count("Ray dashboard: http") == 1, "each line of the run once, not again by Ray's handler"
    niceness = set(_column(tmp_path / "out" / "_stages" / "01-test_niceness", "niceness"))
    assert niceness == {os.nice(0)}


def _column(folder: Path, name: str) -> list:
    import pyarrow.dataset as pads

    return pads.dataset(str(folder), format="parquet").to_table().column(name).to_pylist()
