"""synth.sandbox.forkserver: a forked sandbox gives the code what a bwrap run gives it, and runs share nothing.

The attack suite (test_sandbox_attacks.py) runs every attack against both; this file checks the
plain behaviour, the server's own life (hash seed, a zygote that dies, concurrency) and refusal.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

import synth.sandbox.forkserver as forkserver
from generators.code.calls import Signature
from generators.code.corpus import STDLIB_SKIP, folder_modules, function_candidates, stdlib_folder
from generators.code.execute import CodeExecute, CodeExecuteConfig, ExecutionOptions, run_all
from generators.code.inputs import function_node, signature_calls
from synth.sandbox.forkserver import ForkServer
from synth.sandbox import Sandbox, SandboxLimits, SandboxUnavailable
from synth.stage import StageContext

LIMITS = SandboxLimits(wall_s=3, cpu_s=2, memory_mb=256, processes=8, tmpfs_mb=4, output_kb=64)

WHAT_IT_SEES = """
import json, os, socket
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
limits = [line[:68].split('  ')[0] + line[26:68] for line in open('/proc/self/limits').read().splitlines()]
print(json.dumps({
    'ids': [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()], 'pid': os.getpid(),
    'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()),
    'root': sorted(os.listdir('/')), 'cwd': os.getcwd(), 'host': socket.gethostname(),
    'tmp': sorted(os.listdir('/tmp')), 'env': dict(os.environ), 'limits': limits,
    'caps': [status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs')],
    'interfaces': [name for _, name in socket.if_nameindex()],
    'writable': [p for p in ('/', '/usr', '/dev', '/proc/sys', '/tmp') if os.access(p, os.W_OK)],
}, sort_keys=True))
"""


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS)


@pytest.fixture(scope="module")
def server(sandbox):
    with ForkServer(sandbox, size=2, env={"PYTHONHASHSEED": "7"}) as server:
        yield server


def test_a_forked_sandbox_sees_what_a_bwrap_run_sees(sandbox, server):
    forked = server.run_python(WHAT_IT_SEES, env={"EXTRA": "1", "PYTHONHASHSEED": "7"})
    bwrap = sandbox.run_python(WHAT_IT_SEES, env={"EXTRA": "1", "PYTHONHASHSEED": "7"})
    assert forked.ok and bwrap.ok, (forked.stderr, bwrap.stderr)
    assert forked.stdout == bwrap.stdout  # ids, pids, files, limits, capabilities, environment...


def test_exit_codes_signals_and_limits_are_reported_alike(sandbox, server):
    programs = {
        "raise SystemExit(3)": ("exit_error", "exit code 3"),
        "1/0": ("exit_error", "exit code 1"),
        "import os, signal\nos.kill(os.getpid(), signal.SIGABRT)": ("signal", "SIGABRT"),
        "import sys\nsys.stdout.write('x' * 200_000)": ("output_limit", "killed by the parent: output_limit"),
    }
    for code, expected in programs.items():
        for runner in (server, sandbox):
            result = runner.run_python(code)
            assert (result.status, result.detail) == expected, (code, runner, result)
    # The CPU limit, not the wall clock: 1 CPU second within 60 wall seconds holds on a loaded machine.
    patient = Sandbox(LIMITS.model_copy(update={"cpu_s": 1, "wall_s": 60}))
    with ForkServer(patient) as patient_server:
        for runner in (patient_server, patient):
            result = runner.run_python("while True: pass")
            assert (result.status, result.detail) == ("signal", "SIGXCPU"), (runner, result)
    crashed = server.run_python("1/0")
    assert crashed.stderr.decode().startswith("Traceback") and "zygote" not in crashed.stderr.decode()


def test_a_program_that_does_not_compile_cleanly_reports_as_in_a_bwrap_run(sandbox, server):
    # The zygote compiles each program once for all its runs; an error or a warning stays the run's.
    programs = ["def broken(:\n    pass", "x = 1\nprint(x is 1)", "print(sum(range(10)))"]
    for code in programs * 2:  # the second time from the zygote's compiled programs
        forked, bwrap = server.run_python(code), sandbox.run_python(code)
        assert (forked.returncode, forked.stdout) == (bwrap.returncode, bwrap.stdout)
        # Line numbers differ by one: a bwrap run's program starts with a line that sets the rlimits.
        assert _without_line_numbers(forked.stderr) == _without_line_numbers(bwrap.stderr)
    assert b"SyntaxError" in server.run_python(programs[0]).stderr
    assert b"SyntaxWarning" in server.run_python(programs[1]).stderr


def _without_line_numbers(stderr: bytes) -> bytes:
    return re.sub(rb'(<string>:|File "<string>", line )\d+', rb"\1N", stderr)


def test_past_the_wall_clock_the_whole_sandbox_is_killed(server):
    started = time.monotonic()
    result = server.run_python("import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(60)")
    assert result.status == "timeout" and time.monotonic() - started < LIMITS.wall_s + 1.5
    assert server.run_python("print(1)").stdout == b"1\n", "the zygote serves the next run"


def test_runs_share_no_files_or_processes(server):
    left = server.run_python(
        "import os, subprocess\nopen('/tmp/left-behind', 'w').write('x')\n"
        "subprocess.Popen(['/usr/bin/sleep', '30'], start_new_session=True)"
    )
    seen = server.run_python("import os\nprint(os.listdir('/tmp'), [p for p in os.listdir('/proc') if p.isdigit()])")
    assert left.ok and seen.stdout == b"[] ['1', '2']\n"


def test_the_hash_seed_is_the_servers(sandbox, server):
    code = "print(hash('synth'))"
    assert server.run_python(code).stdout == sandbox.run_python(code, env={"PYTHONHASHSEED": "7"}).stdout
    with pytest.raises(ValueError, match="PYTHONHASHSEED"):
        server.run_python(code, env={"PYTHONHASHSEED": "8"})


def test_concurrent_runs_take_different_zygotes(server):
    results, started = [], time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(server.run_python("import time\ntime.sleep(0.6)")))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status for r in results] == ["ok", "ok"] and time.monotonic() - started < 1.1


def test_a_zygote_that_dies_is_replaced(sandbox):
    with ForkServer(sandbox, size=1) as server:
        server._zygotes[0].process.kill()  # bwrap of the zygote's outer sandbox: it all goes
        failed = server.run_python("print(1)")
        assert not failed.ok and b"zygote stopped" in failed.stderr
        assert server.run_python("print(2)").stdout == b"2\n"


def test_a_stage_starts_its_server_in_setup_its_batches_share_it_and_teardown_closes_it(tmp_path):
    ctx = StageContext(run_name="t", run_id="t-0", seed=0, stage_name="code_execute", stage_index=0,
                       output_dir=tmp_path)  # fmt: skip
    stage = CodeExecute(CodeExecuteConfig(execution=ExecutionOptions(limits=LIMITS), hash_seed=3), ctx)
    batch = pa.table({"source": ["def double(x):\n    return 2 * x\n"], "name": ["double"], "inputs": [["double(4)"]]})
    stage.setup()
    server = stage.server
    try:
        assert all(zygote.process is not None for zygote in server._zygotes)
        for _ in range(2):
            assert stage.process(batch).column("outputs").to_pylist() == [["8"]]
        assert stage.server is server  # one server for every batch of this worker
        assert server.env == {"PYTHONHASHSEED": "3"}  # the stage's hash seed
    finally:
        stage.teardown()
    assert all(zygote.process is None for zygote in server._zygotes)  # nothing outlives the stage


def test_refuses_where_a_zygote_cannot_build_sandboxes_and_run_all_falls_back(sandbox, monkeypatch, caplog):
    """A zygote whose user namespaces fail (as where nested ones are not allowed): refused at start."""
    source = forkserver.zygote_source().replace("_libc.unshare(_CLONE_NEWUSER)", "_libc.unshare(-1)")
    monkeypatch.setattr(forkserver, "zygote_source", lambda: source)
    with pytest.raises(SandboxUnavailable, match="sandbox setup failed"):
        ForkServer(sandbox)
    rows = [{"source": "def double(x):\n    return 2 * x\n", "name": "double", "inputs": ["double(4)"]}]
    runs = run_all(sandbox, rows, ExecutionOptions(limits=LIMITS), hash_seed=0)
    assert runs[0].outputs == ["8"] and "no fork server here" in caplog.text


def test_standard_library_functions_give_the_same_outputs_in_both_sandboxes(sandbox):
    """What the pipeline writes (forked) is what a bwrap run reproduces, on real functions."""
    candidates = [r for module, text in folder_modules(stdlib_folder(), STDLIB_SKIP)
                  for r in function_candidates(text, module) if r["_drop_reason"] is None]  # fmt: skip
    random.Random(0).shuffle(candidates)
    # posixpath's import genericpath, which an interpreter without os could not import
    rows = [r for r in candidates if r["module"] == "posixpath"] + candidates[:60]
    for row in rows:
        fn = function_node(row["source"], row["name"])
        row["inputs"] = signature_calls(fn, Signature.of(fn), 4, random.Random(row["function_id"]))
    rows = [r for r in rows if r["inputs"]]
    forked = run_all(sandbox, rows, ExecutionOptions(limits=LIMITS), hash_seed=0)
    bwrap, again = (run_all(sandbox, rows, ExecutionOptions(limits=LIMITS, fork_server=False), hash_seed=0)
                    for _ in range(2))  # fmt: skip

    def seen(run):
        return run.status, run.case_status, run.outputs

    # functions that differ from run to run anyway (an id(), a clock) are the determinism filter's
    steady = [i for i, (a, b) in enumerate(zip(bwrap, again)) if seen(a) == seen(b)]
    assert len(steady) > 30 and sum(forked[i].status == "ok" for i in steady) > 20
    assert [rows[i]["name"] for i in steady if seen(forked[i]) != seen(bwrap[i])] == []


def test_closing_stdout_and_stderr_does_not_escape_the_wall_clock(server):
    started = time.monotonic()
    result = server.run_python("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)")
    assert (result.status, result.detail) == ("timeout", "killed by the parent: timeout")  # not the zygote's
    assert time.monotonic() - started < LIMITS.wall_s + 1.5


def test_no_run_input_or_output_passes_through_the_zygotes_memory(sandbox):
    """Every later run starts as a copy of the zygote: it must never have held a run's data."""
    secret_in, secret_out = f"synth-in-{os.urandom(8).hex()}", f"synth-out-{os.urandom(8).hex()}"
    with ForkServer(sandbox) as server:
        run = server.run_python(f"import sys\nsys.stdin.read()\nprint('{secret_out[::-1]}'[::-1])",
                                stdin=secret_in.encode())  # fmt: skip
        assert run.stdout.decode().strip() == secret_out
        init = server._zygotes[0].init_pid
        zygote = int(Path(f"/proc/{init}/task/{init}/children").read_text().split()[0])
        memory = _readable_memory(zygote)
    # "synth-out-" itself: the code holds only the output's reversal
    found = [marker for marker in (secret_in.encode(), b"synth-out-") if marker in memory]
    assert len(memory) > 1 << 20 and found == []


def _readable_memory(pid: int) -> bytes:
    """Every readable mapping of `pid` (we are root, or its owner)."""
    chunks = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            span, perms = line.split()[:2]
            if perms.startswith("r") and "[vvar" not in line and "[vsyscall" not in line:
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    chunks.append(mem.read(end - start))
                except OSError:
                    continue
    return b"".join(chunks)
