"""The runner, unchanged, on a real two-node Ray cluster started on this machine.

`ray start --head` plus a worker node that alone has the custom resource `synth_worker`. A pipeline
runs through `synth generate --ray-address`; its stage that asks for `synth_worker` must run on
the worker node, and the dataset must equal the one an embedded Ray makes from the same spec.

Ray rewrites 127.0.0.1 to the machine's outward address, so the nodes use 127.0.0.2 and 127.0.0.3,
loopback addresses it leaves alone. The test's stages reach the CLI's process as a plugin would:
through the `synth.stages` entry point of a small dist-info folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.dataset as pads
import pytest
import ray
import ray.cloudpickle
import yaml

from synth.registry import register
from synth.spec import StageConfig
from synth.stage import MapStage

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
RAY = Path(sys.executable).parent / "ray"
TESTS = Path(__file__).resolve().parent
NODE_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
NODE_ENV.pop("RAY_ADDRESS", None)

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # cluster workers need not import this module


@register
class NodeCounter(MapStage):
    """Passes rows through, counting them under the id of the Ray node that processed them."""

    kind = "test_node_counter"

    class Config(StageConfig):
        kind: Literal["test_node_counter"] = "test_node_counter"

    def process(self, batch):
        self.ctx.count(**{f"rows_on_{ray.get_runtime_context().get_node_id()}": batch.num_rows})
        return batch


# ---------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    address: str
    nodes: list[dict]

    def node_with(self, resource: str) -> str:
        [node] = [n["id"] for n in self.nodes if resource in n["resources"]]
        return node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block` in its own process group, so stopping it stops every process it started."""
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    cmd = [str(RAY), "start", "--block", "--num-cpus=1", "--object-store-memory=150000000",
           "--disable-usage-stats", *ports, *args]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=NODE_ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_started(node: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start did not come up; see {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


NODES_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]))
"""


def alive_nodes(address: str) -> list[dict]:
    """The cluster's live nodes, asked by a separate driver (this process may have its own Ray)."""
    out = subprocess.run([sys.executable, "-c", NODES_SCRIPT, address], check=False, env=NODE_ENV,
                         capture_output=True, text=True, timeout=180)
    if out.returncode:
        raise RuntimeError(f"could not list the nodes of {address}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def stop_nodes(nodes: list[subprocess.Popen], grace_s: float = 10) -> None:
    """SIGTERM each node's process group, then SIGKILL what is left after `grace_s`."""
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for node in nodes:
        try:
            node.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)


def kill_leftovers(temp_dir: Path) -> None:
    """Kill any process still naming this cluster's temp dir (workers the raylet started)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(temp_dir) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # it ended meanwhile


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    temp = Path(tempfile.mkdtemp(prefix="synth-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    port = free_port()
    address = f"{HEAD_IP}:{port}"
    head_log, worker_log = temp / "head.log", temp / "worker.log"
    nodes = [start_node(["--head", f"--port={port}", f"--node-ip-address={HEAD_IP}", "--resources={}",
                         "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                         f"--temp-dir={temp}"], head_log)]
    try:
        wait_started(nodes[0], head_log)
        nodes.append(start_node([f"--address={address}", f"--node-ip-address={WORKER_IP}",
                                 '--resources={"synth_worker": 1}'], worker_log))
        wait_started(nodes[1], worker_log)
        deadline = time.monotonic() + 120
        while len(alive := alive_nodes(address)) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(alive) == 2, f"expected a head and a worker node, got {alive}"
        yield Cluster(address, alive)
    finally:
        stop_nodes(nodes)
        kill_leftovers(temp)
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------- the pipeline


def plugin_env(folder: Path) -> dict[str, str]:
    """An environment in which `python -m synth` finds the test stages through the entry point group."""
    dist = folder / "synth_cluster_test_stages-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: synth-cluster-test-stages\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[synth.stages]\nnumbers = stages_for_tests\nnode_counter = test_ray_cluster:NodeCounter\n")
    return {**NODE_ENV, "PYTHONPATH": os.pathsep.join([str(folder), str(TESTS)])}


def synth_generate(spec: Path, output: Path, env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "synth", "generate", str(spec), "--output", str(output), *args],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((output / "_manifest.json").read_text())


def write_spec(path: Path, name: str, stages: list[dict]) -> Path:
    """A pipeline spec run both on the cluster and embedded; its `ray:` options apply to the embedded run only."""
    path.write_text(yaml.safe_dump({"name": name, "seed": 5, "stages": stages,
                                    "ray": {"num_cpus": 2, "object_store_memory": 200_000_000}}))  # fmt: skip
    return path


def datasets(folder: Path, *outputs: str) -> list:
    """The `data/` table of each named output folder under `folder`."""
    return [pads.dataset(str(folder / name / "data"), format="parquet").to_table() for name in outputs]


def test_a_stage_asking_for_a_custom_resource_runs_on_the_node_that_has_it(cluster, tmp_path):
    spec = write_spec(tmp_path / "cluster.yaml", "cluster-numbers", [
        {"kind": "test_numbers", "count": 40},
        {"kind": "test_drop_multiples", "of": 4},
        {"kind": "test_node_counter", "resources": {"num_cpus": 0.5, "resources": {"synth_worker": 1}}},
    ])  # fmt: skip
    env = plugin_env(tmp_path / "plugin")

    on_cluster = synth_generate(spec, tmp_path / "cluster", env, "--ray-address", cluster.address)
    worker = cluster.node_with("synth_worker")
    assert on_cluster["ray"] == cluster.address
    assert on_cluster["stages"][2]["counters"] == {f"rows_on_{worker}": 30}

    # The embedded Ray has the resource too (RAY_OVERRIDE_RESOURCES), so the very same spec runs.
    embedded = synth_generate(spec, tmp_path / "embedded", {**env, "RAY_OVERRIDE_RESOURCES": '{"synth_worker": 1}'})
    assert embedded["ray"] == "embedded" and embedded["run_id"] == on_cluster["run_id"]
    [embedded_node] = [key.removeprefix("rows_on_") for key in embedded["stages"][2]["counters"]]
    assert embedded_node not in {n["id"] for n in cluster.nodes}
    on_cluster_data, embedded_data = datasets(tmp_path, "cluster", "embedded")
    assert on_cluster_data.num_rows == 30 and on_cluster_data.equals(embedded_data)


def test_dedup_runs_unchanged_on_the_cluster_and_drops_what_the_embedded_run_drops(cluster, tmp_path):
    spec = write_spec(tmp_path / "dedup.yaml", "cluster-dedup", [
        {"kind": "test_sentences", "count": 30, "duplicates": True},
        {"kind": "exact_dedup"},
        {"kind": "minhash_dedup"},
    ])  # fmt: skip
    env = plugin_env(tmp_path / "plugin")
    on_cluster = synth_generate(spec, tmp_path / "cluster", env, "--ray-address", cluster.address)
    embedded = synth_generate(spec, tmp_path / "embedded", env)
    assert on_cluster["ray"] == cluster.address and embedded["ray"] == "embedded"
    assert on_cluster["drops"] == embedded["drops"] == {"exact_dedup": {"exact_duplicate": 30},
                                                        "minhash_dedup": {"near_duplicate": 30}}  # fmt: skip
    on_cluster_data, embedded_data = datasets(tmp_path, "cluster", "embedded")
    assert on_cluster_data.num_rows == 30 and on_cluster_data.equals(embedded_data)
