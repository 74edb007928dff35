"""A run SIGKILLed mid-way resumes from its last finished stage, pays nothing twice, and ends with
the same records as a run that was never interrupted. Real model, real Ray, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from synth.runner import run
from synth.run_spec import load_spec

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"

pytestmark = pytest.mark.slow


def tiny_spec(tmp_path: Path, output: Path) -> Path:
    spec = {
        "name": "instruct-tiny",
        "seed": 11,
        "output": str(output),
        "llm": {"default": {"backend": "local", "batch_size": 8}},
        "stages": [
            {"kind": "self_instruct", "seed_tasks": str(PIPELINES / "seeds" / "instruct_seed_tasks.jsonl"),
             "num_instructions": 6, "prompts_per_round": 4, "max_instances_per_task": 1},
            # One record a batch and two rounds: once the kill's trigger (two answers paid for) is
            # seen, the other record's rounds are still to run, so a loaded machine's slow poll
            # does not let the stage finish before the kill (it did, with both in one batch).
            {"kind": "evol_instruct", "rounds": 2, "resources": {"num_cpus": 1, "batch_size": 1}},
            {"kind": "instruct_checks"},
        ],
    }
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_data(output: Path):
    return pads.dataset(str(output / "data"), format="parquet").to_table()


def generate(spec: Path, ray_tmp: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "synth", "generate", str(spec)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to get there")
        time.sleep(0.2)


def kill_everything_of(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the run as a crash would: the driver and the Ray processes it started.

    Ray's GCS, raylet and workers leave the driver's process group and would otherwise go on
    writing for a moment after the driver dies; they all inherit the run's RAY_TMPDIR.
    """
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, ray_tmp)]
    for pid_dir in survivors:
        try:
            os.kill(int(pid_dir.name), signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(_running(p) for p in survivors) and time.monotonic() < deadline:
        time.sleep(0.1)


def _mentions(pid_dir: Path, ray_tmp: str) -> bool:
    try:  # workers rename themselves (ray::...), so look at the environment, not the command line
        return f"RAY_TMPDIR={ray_tmp}".encode() in (pid_dir / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _running(pid_dir: Path) -> bool:
    try:  # a zombie (state Z) has stopped for good, reaped or not
        return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cached_after(output: Path, moment: float) -> int:
    return sum(1 for f in (output / "_cache" / "llm").rglob("*.json") if f.stat().st_mtime > moment)


def test_sigkill_then_resume_matches_uninterrupted_run(ray_session, tmp_path):
    reference = run(load_spec(tiny_spec(tmp_path, tmp_path / "reference")))
    evol_ref = reference.stages[1].counters

    output = tmp_path / "killed"
    spec = tiny_spec(tmp_path, output)
    first_done = output / "_stages" / "00-self_instruct" / "_SUCCESS.json"
    # Short path: Ray puts Unix sockets under it.
    ray_tmp = tempfile.mkdtemp(prefix="synth-kill-", dir="/tmp")
    proc = generate(spec, ray_tmp)
    try:
        wait_for(first_done.exists, proc, timeout_s=600)
        stage0_finished = first_done.stat().st_mtime
        # Kill once the second stage has paid for some, not all, of its requests.
        wait_for(lambda: cached_after(output, stage0_finished) >= 2, proc, timeout_s=600)
    finally:
        kill_everything_of(proc, ray_tmp)
    assert not (output / "_manifest.json").exists()
    paid_before_kill = cached_after(output, stage0_finished)

    resumed = run(load_spec(spec))
    assert [s.resumed for s in resumed.stages] == [True, False, False]
    assert read_data(resumed.output).equals(read_data(reference.output))

    evol = resumed.stages[1].counters
    assert evol["llm_requests"] == evol_ref["llm_requests"]
    # Each unique request is paid exactly once across the killed run and the resumed one, and the
    # resumed run's counts say what the run paid in all, as the uninterrupted run's do.
    assert evol["llm_paid_by_earlier_attempts"] == paid_before_kill > 0
    assert evol["llm_backend_calls"] == evol_ref["llm_backend_calls"]
    assert evol["llm_cache_hits"] == evol_ref["llm_cache_hits"]
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["stages"][0]["resumed"] is True
