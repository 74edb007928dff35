"""synth.sandbox: what a sandboxed command sees and gets, and refusal where it cannot isolate.

The attacks (fork bombs, escapes, leaks) are in test_sandbox_attacks.py; this file checks the
plain behaviour a caller relies on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from synth.sandbox import SANDBOX_ENV, SANDBOX_UID, Sandbox, SandboxLimits, SandboxUnavailable

LIMITS = SandboxLimits(wall_s=5, cpu_s=2, memory_mb=256, processes=8, tmpfs_mb=4, output_kb=64)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS)


def test_runs_python_with_stdin_and_env(sandbox):
    result = sandbox.run_python("import os, sys\nprint(sys.stdin.read().upper(), os.environ['EXTRA'])",
                                stdin=b"hello", env={"EXTRA": "given"})  # fmt: skip
    assert result.status == "ok" and result.stdout == b"HELLO given\n"


def test_python_and_other_commands_get_the_same_rlimits(sandbox):
    """`run_python` sets the limits from inside the interpreter, `run` through prlimit: same values."""
    expected = {"Max cpu time": ("2", "3"), "Max address space": (str(256 << 20),) * 2,
                "Max processes": ("8", "8"), "Max file size": (str(8 << 20),) * 2,
                "Max open files": ("64", "64"), "Max core file size": ("0", "0")}  # fmt: skip

    def limits(text: str) -> dict[str, tuple[str, str]]:  # /proc/self/limits: fixed-width columns
        rows = {line[:26].strip(): (line[26:47].strip(), line[47:68].strip()) for line in text.splitlines()}
        return {name: row for name, row in rows.items() if name in expected}

    python = sandbox.run_python("print(open('/proc/self/limits').read())")
    other = sandbox.run(["/usr/bin/cat", "/proc/self/limits"])
    assert python.ok and other.ok
    assert limits(python.stdout.decode()) == limits(other.stdout.decode()) == expected


def test_exit_codes_and_signals_are_reported(sandbox):
    assert sandbox.run_python("raise SystemExit(3)").status == "exit_error"
    killed = sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGABRT)")
    assert (killed.status, killed.detail) == ("signal", "SIGABRT")


def test_sees_only_its_own_system(sandbox):
    code = (
        "import os, json\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'root': sorted(os.listdir('/')),\n"
        "  'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), 'cwd': os.getcwd(),\n"
        "  'env': dict(os.environ), 'host': os.uname().nodename}))"
    )
    import json

    seen = json.loads(sandbox.run_python(code).stdout)
    assert (seen["uid"], seen["gid"], seen["cwd"], seen["host"]) == (SANDBOX_UID, SANDBOX_UID, "/tmp", "sandbox")
    assert "etc" not in seen["root"] and "home" not in seen["root"] and "work" not in seen["root"]
    assert seen["pids"] == [1, 2], "a PID namespace of its own: bwrap's init and the command"
    assert set(seen["env"]) <= set(SANDBOX_ENV) | {"PWD", "LC_CTYPE"}


def test_tmp_is_writable_and_capped(sandbox):
    code = (
        "import errno\n"
        "open('/tmp/small', 'w').write('ok')\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(64): f.write(b'x' * 2**20)\n"
        "except OSError as e: print(errno.errorcode[e.errno])\n"
    )
    assert sandbox.run_python(code).stdout.strip() in (b"ENOSPC", b"EFBIG")


def test_wall_clock_kill_is_prompt(sandbox):
    quick = Sandbox(LIMITS.model_copy(update={"wall_s": 1.0}))
    started = time.monotonic()
    result = quick.run_python("import time\ntime.sleep(60)")
    assert result.status == "timeout" and time.monotonic() - started < 3


def test_each_run_is_a_fresh_sandbox(sandbox):
    sandbox.run_python("open('/tmp/left-behind', 'w').write('x')")
    assert sandbox.run_python("import os\nprint(os.listdir('/tmp'))").stdout == b"[]\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user the sandbox runs as that user")
def test_as_root_the_sandboxed_processes_are_nobody_on_the_host(sandbox):
    marker = f"synth-uid-probe-{os.getpid()}"
    code = f"import os\nos.execv('/usr/bin/sleep', ['{marker}', '2'])"
    thread = threading.Thread(target=sandbox.run_python, args=(code,))
    thread.start()
    try:
        # Wait for the command itself (argv[0] is the marker): before that, the launcher that
        # drops root (setpriv, also holding the marker in its arguments) may still be running.
        uids = []
        for _ in range(100):
            pids = _pids_with(marker)
            if any(_argv0(pid) == marker for pid in pids):
                uids = [_uid_of(pid) for pid in pids]
                break
            time.sleep(0.05)
    finally:
        thread.join()
    assert uids and set(uids) == {SANDBOX_UID}, "bwrap, its init and the command all run as nobody"


def _pids_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _argv0(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") or [b""])[0].decode()
    except OSError:
        return ""


def _uid_of(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


# ---------------------------------------------------------------- refusal


def test_refuses_without_bubblewrap(monkeypatch):
    monkeypatch.setattr("synth.sandbox.bwrap.shutil.which", lambda name, path=None: None)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox(LIMITS)


def test_refuses_when_bwrap_cannot_build_the_sandbox_and_runs_nothing(monkeypatch):
    """A bwrap that fails as it does without user namespaces: refused, and the command never ran."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:  # pytest's tmp_path is closed to nobody
        os.chmod(folder, 0o755)
        fake = Path(folder) / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        real_which = shutil.which
        def which(name, path=None):
            return str(fake) if name == "bwrap" else real_which(name, path=path)

        monkeypatch.setattr("synth.sandbox.bwrap.shutil.which", which)
        with pytest.raises(SandboxUnavailable, match="No permissions.*user namespaces.*never run unsandboxed"):
            Sandbox(LIMITS)


def test_refuses_a_bwrap_it_cannot_execute(monkeypatch):
    monkeypatch.setattr("synth.sandbox.bwrap.shutil.which", lambda name, path=None: "/dev/null")
    with pytest.raises(SandboxUnavailable, match="cannot start /dev/null"):
        Sandbox(LIMITS)


def test_refuses_an_interpreter_it_cannot_start():
    with pytest.raises(SandboxUnavailable, match="/no/such/python"):
        Sandbox(LIMITS, python="/no/such/python")


def test_refuses_without_libseccomp(monkeypatch):
    import synth.sandbox.seccomp as seccomp

    def missing(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    seccomp._library.cache_clear()
    seccomp.filter_bpf.cache_clear()
    monkeypatch.setattr(seccomp.ctypes, "CDLL", missing)
    try:
        with pytest.raises(SandboxUnavailable, match="seccomp.*libseccomp2.*never run unsandboxed"):
            Sandbox(LIMITS)
    finally:
        monkeypatch.undo()
        seccomp._library.cache_clear()
        seccomp.filter_bpf.cache_clear()
