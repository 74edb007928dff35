"""Runs side by side on a busy machine: two pipelines keep every CPU busy while a third starts.

Each is a real `python -m synth generate` with its own embedded Ray. The third must start
without a start-up traceback and finish while the other two still burn CPU (its workers are
not starved at a lower priority), and all three must end cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from test_run_failures import numbers_file, plugin_env

pytestmark = pytest.mark.slow


def spec(path: Path, name: str, stages: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "seed": 2, "output": str(path.parent / name), "stages": stages,
                                    "ray": {"num_cpus": 2, "object_store_memory": 100_000_000}}))  # fmt: skip
    return path


def start(spec_file: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "synth", "generate", str(spec_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)  # fmt: skip


def test_a_run_started_beside_two_cpu_bound_runs_starts_cleanly_and_finishes_before_them(tmp_path):
    env = plugin_env(tmp_path / "plugins")
    numbers = numbers_file(tmp_path, ["1", "2"])
    stop, started = tmp_path / "stop", tmp_path / "started"
    started.mkdir()
    burn = [{"kind": "test_numbers_file", "path": str(numbers)},
            {"kind": "test_burn_cpu", "stop": str(stop), "started": str(started), "resources": {"batch_size": 1}}]
    burners = [start(spec(tmp_path / f"burn{i}.yaml", f"burn{i}", burn), env, tmp_path / f"burn{i}.log")
               for i in (1, 2)]  # fmt: skip
    procs = list(burners)
    try:
        deadline = time.monotonic() + 400
        while len(list(started.iterdir())) < 4:  # both runs burn on both of their CPUs
            assert all(p.poll() is None for p in burners), [(tmp_path / f"burn{i}.log").read_text()[-2000:]
                                                              for i in (1, 2)]  # fmt: skip
            assert time.monotonic() < deadline, "the CPU-bound runs did not start"
            time.sleep(1)

        third = start(spec(tmp_path / "third.yaml", "third", [
            {"kind": "test_numbers_file", "path": str(numbers)}, {"kind": "test_niceness"}]), env,
            tmp_path / "third.log")
        procs.append(third)
        assert third.wait(timeout=500) == 0, (tmp_path / "third.log").read_text()[-3000:]
        assert all(p.poll() is None for p in burners)  # it finished while both still burned
        stop.touch()
        for i, proc in enumerate(burners, 1):
            assert proc.wait(timeout=300) == 0, (tmp_path / f"burn{i}.log").read_text()[-3000:]
    finally:
        stop.touch()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    for log in ("burn1", "burn2", "third"):
        assert "Traceback" not in (tmp_path / f"{log}.log").read_text(), log
    niceness = pads.dataset(str(tmp_path / "third" / "data"), format="parquet").to_table().column("niceness")
    assert set(niceness.to_pylist()) == {os.nice(0)}  # its workers ran at its driver's priority
