"""The attack suite: hostile functions run as the function under test, the way the pipeline runs them.

Each attack goes through `generators.code.execute.run_function` (one sandbox, the harness, its
inputs) and `filters.quality.code_checks.drop_reason`. Each test asserts that the attack was
contained, what was recorded as the reason, and (the `host` fixture, after every test) that the
host is unaffected: no sandbox process left behind, canary files untouched, processes still start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filters.quality.code_checks import CodeChecksConfig, drop_reason
from generators.code.execute import ExecutionOptions, FunctionRun, run_function
from synth.sandbox import memory_cgroup
from synth.sandbox.forkserver import ForkServer
from synth.sandbox import SANDBOX_UID, Sandbox, SandboxLimits
from synth.sandbox.bwrap import sandbox_result

LIMITS = SandboxLimits(wall_s=4, cpu_s=2, memory_mb=256, processes=8, file_mb=2, tmpfs_mb=4, output_kb=64)
OPTIONS = ExecutionOptions(limits=LIMITS, case_timeout_s=1.0, max_output_chars=20_000)
PROJECT = Path(__file__).resolve().parents[1]
SECRET = "synth-attack-secret-7f3a"


@pytest.fixture(scope="module", params=["bwrap", "forkserver"])
def sandbox(request) -> Iterator[Sandbox | ForkServer]:
    """Every attack against both ways a function's sandbox is made: bwrap per run, and forked."""
    if request.param == "bwrap":
        yield Sandbox(LIMITS)
    else:
        with ForkServer(Sandbox(LIMITS), size=2, env={"PYTHONHASHSEED": "0"}) as server:
            yield server


@pytest.fixture(autouse=True)
def host(tmp_path):
    """Canary files and the host's sandbox-user processes, checked after the attack."""
    (tmp_path / "canary.txt").write_text("precious")
    canaries = {path: path.read_text() for path in (tmp_path / "canary.txt", PROJECT / "pyproject.toml")}
    before = _sandbox_user_processes()
    yield
    for path, text in canaries.items():
        assert path.read_text() == text, f"{path} changed"
    outlived = _sandbox_user_processes() - before
    assert not outlived, f"a sandboxed process outlived its sandbox: {[_describe(pid) for pid in outlived]}"
    assert subprocess.run(["/usr/bin/true"]).returncode == 0, "the host can no longer start processes"


def _sandbox_user_processes() -> set[int]:
    """Live processes of the sandbox user (zombies have exited: the host's init reaps them) that
    are ours or nobody's: other processes on a shared machine run sandboxes of their own."""
    statuses = {}
    for entry in Path("/proc").iterdir():
        try:
            text = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if text:
            statuses[int(entry.name)] = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return {pid for pid, status in statuses.items()
            if _is_sandbox_user(status) and "Z" not in status["State"] and _started_here_or_orphaned(pid, statuses)}


def _is_sandbox_user(status: dict) -> bool:
    return status.get("Uid", "").split("\t")[0] == str(SANDBOX_UID)


def _started_here_or_orphaned(pid: int, statuses: dict) -> bool:
    """Up its parents to the first one that is not the sandbox user: this process, or the host's init."""
    while pid in statuses and _is_sandbox_user(statuses[pid]):
        pid = int(statuses[pid]["PPid"])
    return pid in (os.getpid(), 1, 0) or pid not in statuses


def _describe(pid: int) -> str:
    try:
        command = (Path("/proc") / str(pid) / "cmdline").read_bytes()[:80].replace(b"\0", b" ").decode(errors="replace")
        status = dict(line.split(":\t", 1) for line in (Path("/proc") / str(pid) / "status").read_text().splitlines())
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {command!r} parent {status['PPid']} pids {status['NSpid']} {status['State']}"


def attack(sandbox: Sandbox, source: str, *calls: str) -> tuple[FunctionRun, str | None]:
    name = source.split("def ", 1)[1].split("(", 1)[0]
    run = run_function(sandbox, source, name, list(calls), OPTIONS)
    return run, drop_reason(run.status, run.case_status, run.outputs, CodeChecksConfig())


FORK_BOMB = (
    "import os\n"
    "def bomb(n):\n"
    "    while True:\n"
    "        try:\n"
    "            os.fork()\n"
    "        except OSError:\n"
    "            pass\n"
)


def test_fork_bomb(sandbox):
    started = time.monotonic()
    run, reason = attack(sandbox, FORK_BOMB, "bomb(1)")
    assert time.monotonic() - started < LIMITS.wall_s + 2
    assert reason in ("all_inputs_raise", "sandbox_timeout", "sandbox_signal")


def test_process_limit_holds(sandbox):
    source = (
        "import os, time\n"
        "def spawn(n):\n"
        "    made = 0\n"
        "    for _ in range(n):\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(30)\n"
        "        except OSError as e:\n"
        "            return made, e.__class__.__name__\n"
        "        made += 1\n"
        "    return made, None\n"
    )
    run, _ = attack(sandbox, source, "spawn(100)")
    made, error = eval(run.outputs[0])  # noqa: S307 - our own test's output, parsed for the assertion
    assert error == "BlockingIOError" and made < LIMITS.processes


def test_memory_bomb(sandbox):
    source = "def grow(n):\n    hoard = []\n    while True:\n        hoard.append(bytearray(n))\n    return hoard\n"
    patient = OPTIONS.model_copy(update={"case_timeout_s": 10.0})  # the memory limit, not the clock, must stop it
    run = run_function(sandbox, source, "grow", ["grow(50000000)"], patient)
    reason = drop_reason(run.status, run.case_status, run.outputs, CodeChecksConfig())
    assert run.case_status == ["raised"] and run.outputs[0].startswith("MemoryError")
    assert reason == "all_inputs_raise"


SPIN_IGNORING_SIGNALS = (
    "import signal\n"
    "def spin(n):\n"
    "    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU):\n"
    "        signal.signal(sig, signal.SIG_IGN)\n"
    "    while True:\n"
    "        n += 1\n"
    "    return n\n"
)


def test_cpu_loop_that_ignores_signals_is_stopped_per_case(sandbox):
    # The harness kills a call's process past the case timeout; no signal of its own to ignore.
    run, reason = attack(sandbox, SPIN_IGNORING_SIGNALS, "spin(0)", "spin(1)")
    assert (run.status, run.case_status, reason) == ("ok", ["timeout", "timeout"], "all_inputs_raise")


def test_cpu_limit_ends_the_run():
    # The CPU limit, not the wall clock or the case timeout: 1 CPU second in 60 wall seconds.
    patient = Sandbox(LIMITS.model_copy(update={"cpu_s": 1, "wall_s": 60}))
    slow_cases = OPTIONS.model_copy(update={"case_timeout_s": 50.0})
    for runner in (patient, ForkServer(patient, env={"PYTHONHASHSEED": "0"})):
        try:
            run = run_function(runner, SPIN_IGNORING_SIGNALS, "spin", ["spin(0)"], slow_cases)
        finally:
            getattr(runner, "close", lambda: None)()
        assert (run.status, run.detail.split(";")[0]) == ("signal", "SIGKILL"), run  # SIGXCPU ignored: the hard limit


def test_cpu_loop_is_stopped_per_case():
    # Room for both 1 s cases on a busy machine: the case alarm must stop them, not the sandbox limits.
    roomy = Sandbox(LIMITS.model_copy(update={"cpu_s": 5, "wall_s": 20}))
    run, reason = attack(roomy, "def spin(n):\n    while True:\n        n += 1\n    return n\n", "spin(0)", "spin(1)")
    assert run.case_status == ["timeout", "timeout"] and reason == "all_inputs_raise"


def test_sleep_past_the_timeout(sandbox):
    source = (
        "import signal, time\n"
        "def nap(n):\n"
        "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "    time.sleep(n)\n"
        "    return n\n"
    )
    started = time.monotonic()
    run, reason = attack(sandbox, source, "nap(100)", "nap(200)")
    assert (run.case_status, reason) == (["timeout", "timeout"], "all_inputs_raise")
    assert time.monotonic() - started < LIMITS.wall_s + 2


def test_a_call_that_blocks_the_harness_hits_the_wall_clock(sandbox):
    """Stopping the harness (its parent) keeps it from reading: the wall clock ends the run."""
    source = "import os, signal, time\ndef freeze(n):\n    os.kill(os.getppid(), signal.SIGSTOP)\n    time.sleep(n)\n"
    started = time.monotonic()
    run, reason = attack(sandbox, source, "freeze(100)")
    assert (run.status, reason) == ("timeout", "sandbox_timeout")
    assert time.monotonic() - started < LIMITS.wall_s + 2


def test_huge_output(sandbox):
    source = "import os\ndef flood(n):\n    while True:\n        os.write(n, b'x' * 65536)\n    return n\n"
    run, reason = attack(sandbox, source, "flood(2)")  # stderr: the sandbox's own, capped
    assert (run.status, reason) == ("output_limit", "sandbox_output_limit")
    run, reason = attack(sandbox, source, "flood(1)")  # stdout: the call's result pipe
    assert (run.status, reason) == ("tampered", "tampered")


def test_huge_return_value_is_too_long_not_a_flood(sandbox):
    run, reason = attack(sandbox, "def big(n):\n    return 'x' * n\n", "big(1000000)", "big(30000000)")
    assert run.case_status == ["too_long", "too_long"] and reason == "unrepresentable_outputs"


def test_writes_outside_the_tmpfs(sandbox, tmp_path):
    targets = ["/pwned", "/usr/pwned", "/dev/pwned", "/dev/shm/pwned", "/etc/pwned", "/root/pwned",
               f"{PROJECT}/pwned", f"{tmp_path}/canary.txt", "/proc/sys/kernel/hostname"]  # fmt: skip
    source = (
        "def scribble(paths):\n"
        "    outcomes = []\n"
        "    for path in paths:\n"
        "        try:\n"
        "            with open(path, 'w') as f:\n"
        "                f.write('pwned')\n"
        "            outcomes.append('WROTE')\n"
        "        except OSError as e:\n"
        "            outcomes.append(type(e).__name__)\n"
        "    try:\n"
        "        with open('/tmp/fill', 'wb') as f:\n"
        "            for _ in range(64):\n"
        "                f.write(b'x' * 2**20)\n"
        "        outcomes.append('FILLED')\n"
        "    except OSError as e:\n"
        "        outcomes.append(type(e).__name__)\n"
        "    return outcomes\n"
    )
    run, _ = attack(sandbox, source, f"scribble({targets!r})")
    outcomes = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert "WROTE" not in outcomes and "FILLED" not in outcomes, dict(zip(targets + ["/tmp 64 MB"], outcomes))
    for path in targets[:-1]:
        assert not Path(path).exists() or path.endswith("canary.txt")


def test_reading_host_files(sandbox):
    paths = [str(PROJECT / "pyproject.toml"), str(PROJECT), "/root", "/root/.bashrc", "/etc/shadow", "/etc/passwd",
             "/home"]  # fmt: skip
    source = (
        "import os\n"
        "def peek(paths):\n"
        "    seen = []\n"
        "    for path in paths:\n"
        "        try:\n"
        "            seen.append(sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read())\n"
        "        except OSError as e:\n"
        "            seen.append(type(e).__name__)\n"
        "    return seen\n"
    )
    run, _ = attack(sandbox, source, f"peek({paths!r})")
    seen = dict(zip(paths, eval(run.outputs[0])))  # noqa: S307 - our own test's output
    for path in paths:
        if path == "/root":  # exists only when the interpreter lives under it (pyenv as root)
            assert seen[path] in ("FileNotFoundError", [".pyenv"]), seen[path]
        else:
            assert seen[path] == "FileNotFoundError", (path, seen[path])


def test_network_loopback_and_outward(sandbox):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        source = (
            "import socket\n"
            "def reach(targets):\n"
            "    outcomes = [[name for _, name in socket.if_nameindex()]]\n"
            "    for host, port in targets:\n"
            "        try:\n"
            "            socket.create_connection((host, port), timeout=0.5).close()\n"
            "            outcomes.append('CONNECTED')\n"
            "        except OSError as e:\n"
            "            outcomes.append(type(e).__name__)\n"
            "    try:\n"
            "        socket.getaddrinfo('example.com', 80)\n"
            "        outcomes.append('RESOLVED')\n"
            "    except OSError as e:\n"
            "        outcomes.append(type(e).__name__)\n"
            "    return outcomes\n"
        )
        run, _ = attack(sandbox, source, f"reach([('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)])")
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the host's loopback
    interfaces, *outcomes = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert interfaces == ["lo"]
    # bwrap brings the namespace's own, empty loopback up (refused); a forked sandbox leaves
    # every interface down (unreachable)
    assert outcomes[0] == ("OSError" if isinstance(sandbox, ForkServer) else "ConnectionRefusedError")
    assert "CONNECTED" not in outcomes and "RESOLVED" not in outcomes


def test_environment_leak(sandbox, monkeypatch):
    monkeypatch.setenv("SYNTH_ATTACK_SECRET", SECRET)
    source = (
        "import os\n"
        "def loot(n):\n"
        "    found = {'os.environ': repr(dict(os.environ))}\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit() or pid == 'self':\n"
        "            try:\n"
        "                found[pid] = open('/proc/' + pid + '/environ', 'rb').read().decode('latin-1')\n"
        "            except OSError as e:\n"
        "                found[pid] = type(e).__name__\n"
        "    return found\n"
    )
    if isinstance(sandbox, ForkServer):  # zygotes that start while the parent holds the secret
        with ForkServer(Sandbox(LIMITS), env={"PYTHONHASHSEED": "0"}) as server:
            run, _ = attack(server, source, "loot(1)")
    else:
        run, _ = attack(sandbox, source, "loot(1)")
    found = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert set(found) == {"os.environ", "1", "2", "3", "self"}, "its init, the harness and the call's process"
    # bwrap's init started with an empty environment; a forked sandbox's init still holds
    # capabilities in its namespaces, and the harness is not dumpable: neither may be read.
    assert found["1"] in ("", "PermissionError") and found["2"] == "PermissionError"
    assert "PATH=/usr/bin:/bin" in found["self"] and "'PATH'" in found["os.environ"]
    assert SECRET not in run.outputs[0] and "SYNTH_ATTACK_SECRET" not in run.outputs[0]


def test_inherited_file_descriptors(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        source = (
            "import os\n"
            "def grab(fd):\n"
            "    try:\n"
            "        leaked = os.read(fd, 100).decode()\n"
            "    except OSError as e:\n"
            "        leaked = type(e).__name__\n"
            "    return sorted(os.listdir('/proc/self/fd')), leaked\n"
        )
        run, _ = attack(sandbox, source, f"grab({fd})")
    finally:
        os.close(fd)
    fds, leaked = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert leaked == "OSError" and SECRET not in run.outputs[0]
    assert set(fds) <= {"0", "1", "2", "3"}, "stdin, stdout, stderr and listdir's own descriptor"


def test_killing_the_parent(sandbox):
    # a host process of the sandbox's own user: the one it could signal, were it visible
    victim = subprocess.Popen(["/usr/bin/sleep", "60"], user=SANDBOX_UID, group=SANDBOX_UID)
    try:
        source = (
            "import os, signal\n"
            "def regicide(pids):\n"
            "    outcomes = []\n"
            "    for pid in pids + [1]:\n"
            "        try:\n"
            "            os.kill(pid, signal.SIGKILL)\n"
            "            outcomes.append('SENT')\n"
            "        except OSError as e:\n"
            "            outcomes.append(type(e).__name__)\n"
            "    return outcomes\n"
        )
        # pids 1 and 2 exist in there (its init and the code): an orphaned pytest's parent is 1
        host_pids = [pid for pid in (os.getpid(), os.getppid(), victim.pid) if pid > 2]
        run, _ = attack(sandbox, source, f"regicide({host_pids})")
        assert victim.poll() is None, "a host process of the sandbox user was killed"
    finally:
        victim.kill()
        victim.wait()
    outcomes = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert outcomes[: len(host_pids)] == ["ProcessLookupError"] * len(host_pids), "host processes are not visible"
    # the sandbox's own init ignores signals from inside; whatever happened, it stayed inside
    patricide = "import os\ndef patricide(n):\n    os.kill(os.getppid(), 9)\n    return n\n"
    run, reason = attack(sandbox, patricide, "patricide(1)")  # the harness: the run ends, nothing recorded
    assert (run.status, run.outputs, reason) == ("signal", [], "sandbox_signal")


def test_daemonised_grandchild_does_not_outlive_the_sandbox(sandbox):
    marker = f"synth-daemon-{os.getpid()}"
    source = (
        "import os\n"
        "def daemonise(marker):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            for fd in (0, 1, 2):\n"
        "                os.close(fd)\n"
        "            os.execv('/usr/bin/sleep', [marker, '60'])\n"
        "        os._exit(0)\n"
        "    return marker\n"
    )
    started = time.monotonic()
    run, _ = attack(sandbox, source, f"daemonise({marker!r})")
    assert run.case_status == ["ok"] and time.monotonic() - started < LIMITS.wall_s
    time.sleep(0.2)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]


def _cmdline_has(proc: Path, marker: str) -> bool:
    try:
        return (proc / "cmdline").read_bytes().startswith(marker.encode())
    except OSError:
        return False


def test_ctypes_segfault(sandbox):
    run, reason = attack(sandbox, "import ctypes\ndef crash(n):\n    return ctypes.string_at(n)\n", "crash(0)")
    assert (run.status, run.detail.split(";")[0], reason) == ("signal", "SIGSEGV", "sandbox_signal")


def test_nested_user_namespace(sandbox):
    source = (
        "import ctypes, errno, os, subprocess\n"
        "def nest(flags):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    result = libc.unshare(flags)\n"
        "    code = errno.errorcode.get(ctypes.get_errno(), 'none') if result else 'UNSHARED'\n"
        "    tool = subprocess.run(['/usr/bin/unshare', '--user', '--map-root-user', '/usr/bin/true'],\n"
        "                          capture_output=True).returncode\n"
        "    return code, tool\n"
    )
    run, _ = attack(sandbox, source, f"nest({0x10000000})")  # CLONE_NEWUSER
    code, tool = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert code in ("EPERM", "ENOSPC", "EUSERS") and tool != 0


def test_setuid_and_setgid(sandbox):
    source = (
        "import os, subprocess\n"
        "def escalate(n):\n"
        "    outcomes = []\n"
        "    for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.seteuid(0),\n"
        "                    lambda: os.setgroups([0]), lambda: os.setresuid(0, 0, 0)):\n"
        "        try:\n"
        "            attempt()\n"
        "            outcomes.append('BECAME ROOT')\n"
        "        except OSError as e:\n"
        "            outcomes.append(e.errno)\n"
        "    mount = subprocess.run(['/usr/bin/mount', '-t', 'tmpfs', 'none', '/tmp'], capture_output=True)\n"
        "    return outcomes, mount.returncode, os.getuid(), os.geteuid()\n"
    )
    run, _ = attack(sandbox, source, "escalate(0)")
    outcomes, mount_code, uid, euid = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert set(outcomes) <= {errno.EPERM, errno.EINVAL}, outcomes  # EINVAL: uid 0 does not exist in there
    assert mount_code != 0 and uid == euid == SANDBOX_UID


def test_attacks_run_concurrently_stay_apart(sandbox):
    """A fork bomb next to an honest function: the honest one still gets its processes."""
    honest = "import subprocess\ndef honest(n):\n    return subprocess.run(['/usr/bin/true']).returncode + n\n"
    results = {}
    threads = [threading.Thread(target=lambda: results.setdefault("bomb", attack(sandbox, FORK_BOMB, "bomb(0)")))]
    threads[0].start()
    time.sleep(0.3)
    results["honest"] = attack(sandbox, honest, "honest(1)", "honest(2)")
    threads[0].join()
    assert results["honest"][0].outputs == ["1", "2"]


# ---------------------------------------------------------------- second round


def _syscall_errors() -> str:
    """A function that calls each named system call with arguments that succeed, or fail with
    something other than EPERM, were the call allowed; it returns the errno names."""
    return (
        "import ctypes, errno\n"
        "def probe(calls):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    seen = {}\n"
        "    for name, (number, args) in calls.items():\n"
        "        result = libc.syscall(number, *args)\n"
        "        seen[name] = errno.errorcode.get(ctypes.get_errno(), '?') if result < 0 else 'ALLOWED'\n"
        "    return seen\n"
    )


# name -> arguments that do not give EPERM where the call is allowed (EFAULT, EINVAL, EBADF...)
_DENIED_PROBES = {
    "io_uring_setup": (1, 0),
    "io_uring_enter": (-1, 0, 0, 0, 0, 0),
    "io_uring_register": (-1, 0, 0, 0),
    "keyctl": (0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": (0, 0, 0, 0, -3),
    "request_key": (0, 0, 0, 0),
    "ptrace": (0, 0, 0, 0),  # PTRACE_TRACEME
    "process_vm_readv": (1, 0, 0, 0, 0, 0),
    "process_vm_writev": (1, 0, 0, 0, 0, 0),
    "pidfd_getfd": (-1, 0, 0),
    "kcmp": (-1, -1, 0, 0, 0),
    "perf_event_open": (0, 0, -1, -1, 0),
    "bpf": (-1, 0, 0),
    "userfaultfd": (-1,),
    "unshare": (0,),  # no flags: a no-op that succeeds where allowed
    "setns": (-1, 0),
    "personality": (0xFFFFFFFF,),  # a query
    "open_tree": (-1, 0, 0),
    "fsopen": (0, 0),
    "mount_setattr": (-1, 0, 0, 0, 0),
}


def test_seccomp_denies_the_kernels_risky_surface(sandbox):
    from synth.sandbox.seccomp import DENIED, syscall_number

    calls = {name: (syscall_number(name), args) for name, args in _DENIED_PROBES.items() if syscall_number(name)}
    calls["clone3"] = (syscall_number("clone3"), (0, 0))
    calls["clone(CLONE_NEWUSER)"] = (syscall_number("clone"), (0x10000000 | 17, 0, 0, 0, 0))
    assert set(_DENIED_PROBES) <= DENIED
    run, _ = attack(sandbox, _syscall_errors(), f"probe({calls!r})")
    seen = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert seen.pop("clone3") == "ENOSYS"  # as in Docker's profile: the C library falls back to clone
    assert seen == {name: "EPERM" for name in seen}, seen


def test_seccomp_leaves_what_ordinary_code_needs(sandbox):
    source = (
        "import os, subprocess, threading, socket, mmap, select, tempfile\n"
        "def ordinary(n):\n"
        "    box = []\n"
        "    thread = threading.Thread(target=lambda: box.append(sum(range(n))))\n"
        "    thread.start(); thread.join()\n"
        "    child = subprocess.run(['/usr/bin/echo', 'hi'], capture_output=True).stdout\n"
        "    with tempfile.TemporaryFile() as f:\n"
        "        f.write(b'x' * 4096); f.flush()\n"
        "        mapped = mmap.mmap(f.fileno(), 4096)[:1]\n"
        "    a, b = socket.socketpair(); a.send(b'y'); got = b.recv(1)\n"
        "    return box[0], child, mapped, got\n"
    )
    run, _ = attack(sandbox, source, "ordinary(10)")
    assert run.outputs == ["(45, b'hi\\n', b'x', b'y')"], run


_KEY_PEEK = (
    "import ctypes, errno\n"
    "def peek(numbers, description):\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    keyctl, add_key = numbers\n"
    "    keys = open('/proc/keys').read()\n"
    "    found = libc.syscall(keyctl, 10, -3, b'user', description, 0)  # KEYCTL_SEARCH in @s\n"
    "    search = errno.errorcode.get(ctypes.get_errno(), '?') if found < 0 else found\n"
    "    added = libc.syscall(add_key, b'user', b'planted', b'x', 1, -3)\n"
    "    plant = errno.errorcode.get(ctypes.get_errno(), '?') if added < 0 else added\n"
    "    return keys, search, plant\n"
)


ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
"""A seccomp program of one instruction, `return ALLOW`: to test the layer beneath the filter."""


@pytest.mark.parametrize("filtered", [True, False], ids=["filter", "keyring-alone"])
def test_the_hosts_session_keyring_is_out_of_reach(sandbox, monkeypatch, filtered):
    """The process that starts sandboxes holds a session keyring with a key in it (as under runc
    or a PAM login): no run may read it, search it or add to it. The filter denies the key
    system calls; without it, each run's own fresh keyring still keeps the host's out of reach."""
    import ctypes

    import synth.sandbox.launcher as launcher
    from synth.sandbox.seccomp import syscall_number

    keyctl, add_key = syscall_number("keyctl"), syscall_number("add_key")
    libc = ctypes.CDLL(None, use_errno=True)
    description = f"synth-attack-{os.getpid()}".encode()
    outcome = {}

    def keyed_host():  # session keyrings are per thread: this one's alone gets the key
        assert libc.syscall(keyctl, 1, None) >= 0, "join a session keyring"  # KEYCTL_JOIN_SESSION_KEYRING
        key = libc.syscall(add_key, b"user", description, SECRET.encode(), len(SECRET), -3)
        assert key > 0, os.strerror(ctypes.get_errno())
        # a launcher thread started from here inherits the key, unless it joins a keyring per sandbox
        monkeypatch.setattr(launcher, "_pool", None)
        plain = Sandbox(LIMITS)
        plain.seccomp = plain.seccomp if filtered else ALLOW_ALL
        if isinstance(sandbox, ForkServer):
            with ForkServer(plain, env={"PYTHONHASHSEED": "0"}) as server:
                outcome["run"] = attack(server, _KEY_PEEK, f"peek({(keyctl, add_key)!r}, {description!r})")
        else:
            outcome["run"] = attack(plain, _KEY_PEEK, f"peek({(keyctl, add_key)!r}, {description!r})")
        buffer = ctypes.create_string_buffer(64)
        read = libc.syscall(keyctl, 11, key, buffer, 64)  # KEYCTL_READ
        outcome["host"] = buffer.raw[:read] if read >= 0 else os.strerror(ctypes.get_errno())
        outcome["planted"] = libc.syscall(keyctl, 10, -3, b"user", b"planted", 0)

    thread = threading.Thread(target=keyed_host)
    thread.start()
    thread.join()
    (run, _), host_key = outcome["run"], outcome["host"]
    keys, search, plant = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert host_key == SECRET.encode(), "the host still reads its own key"
    assert description.decode() not in keys, keys
    if filtered:
        assert (search, plant) == ("EPERM", "EPERM"), run.outputs
    else:  # not found in its own keyring; what it adds lands there, and goes with the run
        assert search == "ENOKEY" and isinstance(plant, int), run.outputs
    assert outcome["planted"] < 0, "no key was added to the host's keyring"


ISSUE_FORGERY = (  # as reported: reads the calls back from stdin, writes the harness's lines, exits
    "import marshal, posixpath\n"
    "def add_one(x):\n"
    "    o = posixpath.os; o.lseek(0, 0, 0)\n"
    "    calls = marshal.loads(o.read(0, 1 << 20))[2]\n"
    "    o.write(1, ''.join('[\"ok\",\"%d\"]\\n' % (a[0] * 10 + 7) for a, k in calls).encode()); o._exit(0)\n"
    "    return x + 1\n"
)
BLIND_FORGERY = (  # knows the inputs without stdin
    "import posixpath\n"
    "def add_one(x):\n"
    "    o = posixpath.os\n"
    "    o.write(1, b'[\"loaded\",\"\"]\\n[\"ok\",\"17\"]\\n[\"ok\",\"27\"]\\n')\n"
    "    if x > 1:\n"
    "        o._exit(0)\n"
    "    return x + 1\n"
)


@pytest.mark.parametrize("source", [ISSUE_FORGERY, BLIND_FORGERY], ids=["issue", "blind"])
def test_forged_results_are_never_recorded(sandbox, source):
    run, reason = attack(sandbox, source, "add_one(1)", "add_one(2)")
    assert "17" not in run.outputs and "27" not in run.outputs
    if source is ISSUE_FORGERY:  # stdin was read and closed before the function ran
        assert run.case_status == ["raised", "raised"] and run.outputs[0].startswith("EOFError")
    else:
        assert (run.status, reason) == ("tampered", "tampered"), run


def test_the_result_channel_is_out_of_reach(sandbox):
    source = (
        "import ctypes, os\n"
        "def reach(numbers):\n"
        "    harness, outcomes = os.getppid(), []\n"
        "    for path, mode in (('/proc/%d/fd/1' % harness, 'wb'), ('/proc/%d/mem' % harness, 'r+b'),\n"
        "                       ('/proc/%d/fd/0' % harness, 'rb'), ('/proc/%d/environ' % harness, 'rb')):\n"
        "        try:\n"
        "            open(path, mode).close()\n"
        "            outcomes.append('OPENED ' + path)\n"
        "        except OSError as e:\n"
        "            outcomes.append(type(e).__name__)\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    for number, args in numbers:\n"
        "        outcomes.append(libc.syscall(number, *args) == -1 and ctypes.get_errno())\n"
        "    return outcomes\n"
    )
    from synth.sandbox.seccomp import syscall_number

    attach = (syscall_number("ptrace"), (16, 2, 0, 0))  # PTRACE_ATTACH to the harness (pid 2)
    write_memory = (syscall_number("process_vm_writev"), (2, 0, 0, 0, 0, 0))
    run, _ = attack(sandbox, source, f"reach({[attach, write_memory]!r})")
    outcomes = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert outcomes == ["PermissionError"] * 4 + [errno.EPERM] * 2, outcomes


def test_earlier_programs_leave_no_trace_in_later_runs(sandbox):
    """A forked run starts as a copy of its zygote: it must never have held another run's program."""
    secret = f"synth-program-{os.urandom(6).hex()}"
    for _ in range(2):  # both zygotes of the server
        assert sandbox.run_python(f"program = {secret!r}\n").ok
    scan = (  # the secret comes in two halves and is never whole in this run's memory
        "import sys\n"
        "head, tail = (part.encode() for part in sys.stdin.read().split('|'))\n"
        "found = False\n"
        "with open('/proc/self/mem', 'rb', buffering=0) as mem:\n"
        "    for line in open('/proc/self/maps').read().splitlines():\n"
        "        span, perms = line.split()[:2]\n"
        "        if perms.startswith('r') and '[v' not in line:\n"
        "            start, end = (int(x, 16) for x in span.split('-'))\n"
        "            try:\n"
        "                mem.seek(start); data = mem.read(end - start)\n"
        "            except OSError:\n"
        "                continue\n"
        "            at = data.find(head)\n"
        "            while at >= 0 and not found:\n"
        "                found = data[at + len(head) : at + len(head) + len(tail)] == tail\n"
        "                at = data.find(head, at + 1)\n"
        "print(found)\n"
    )
    halves = f"{secret[:16]}|{secret[16:]}".encode()
    for _ in range(2):
        result = sandbox.run_python(scan, stdin=halves)
        assert result.stdout == b"False\n", result
    result = sandbox.run_python(f"program = {secret!r}\n" + scan, stdin=halves)
    assert result.stdout == b"True\n", "the scan finds a program's text where it is"


def test_one_program_size_limit_on_both_paths(sandbox):
    huge = "x = 1\n" * 40_000  # 240 KB
    result = sandbox.run_python(huge)
    assert (result.status, result.returncode) == ("program_too_large", None) and "240000 bytes" in result.detail
    run, reason = attack(sandbox, "def f(x):\n    return x\n" + "# padding\n" * 20_000, "f(1)")
    assert (run.status, reason) == ("program_too_large", "sandbox_program_too_large")
    # under the limit, a program that is hard to compile fails in its own run, under its limits
    bomb = sandbox.run_python("x = " + "-" * 90_000 + "1\n")
    assert not bomb.ok and b"zygote stopped" not in bomb.stderr, bomb
    assert sandbox.run_python("print(1)").stdout == b"1\n"


@contextlib.contextmanager
def _same_kind(sandbox, limits: SandboxLimits):
    """A sandbox of the fixture's kind with other limits."""
    if isinstance(sandbox, ForkServer):
        with ForkServer(Sandbox(limits), env={"PYTHONHASHSEED": "0"}) as server:
            yield server
    else:
        yield Sandbox(limits)


needs_memory_cgroup = pytest.mark.skipif(not memory_cgroup.available(), reason="no writable cgroup v1 memory "
                                         "controller here: the documented rlimit bound applies")  # fmt: skip


@needs_memory_cgroup
def test_children_share_one_memory_limit(sandbox):
    """Five children of 100 MB each would hold 500 MB under a 256 MB per-process limit."""
    source = (
        "import os, select, time\n"
        "def hoard(children, mb):\n"
        "    r, w = os.pipe()\n"
        "    pids = []\n"
        "    for _ in range(children):\n"
        "        pids.append(os.fork())\n"
        "        if pids[-1] == 0:\n"
        "            open('/proc/self/oom_score_adj', 'w').write('1000')  # the OOM killer's first choice\n"
        "            block = b'x' * (mb << 20)\n"
        "            os.write(w, b'1')\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "    held, deadline = 0, time.monotonic() + 3\n"
        "    while time.monotonic() < deadline:\n"
        "        if select.select([r], [], [], 0.2)[0]:\n"
        "            held += len(os.read(r, 64))\n"
        "    alive = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in pids)\n"
        "    return min(held, alive) * mb  # held at once: the OOM killer may end one after it wrote\n"
    )
    patient = OPTIONS.model_copy(update={"case_timeout_s": 4.0})
    with _same_kind(sandbox, LIMITS.model_copy(update={"wall_s": 10})) as box:
        run = run_function(box, source, "hoard", ["hoard(5, 100)"], patient)
    assert run.status == "signal" or int(run.outputs[0]) <= LIMITS.memory_mb, run


@needs_memory_cgroup
def test_shared_memory_counts_against_the_runs_limit(sandbox):
    """memfds of 8 MB each (the file size limit), up to 64 open files: 512 MB without a run limit."""
    source = (
        "import os\n"
        "def fill(total_mb):\n"
        "    fds, written = [], 0\n"
        "    try:\n"
        "        while written < total_mb:\n"
        "            fd = os.memfd_create('hoard')\n"
        "            fds.append(fd)\n"
        "            for _ in range(8):\n"
        "                os.write(fd, b'x' * (1 << 20))\n"
        "                written += 1\n"
        "    except OSError as e:\n"
        "        return written, type(e).__name__\n"
        "    return written, None\n"
    )
    limits = LIMITS.model_copy(update={"file_mb": 8, "open_files": 128})
    with _same_kind(sandbox, limits) as box:
        run = run_function(box, source, "fill", ["fill(600)"], OPTIONS)
    if run.status == "ok":
        written, error = eval(run.outputs[0])  # noqa: S307 - our own test's output
        assert written < LIMITS.memory_mb and error == "OSError", run.outputs
    else:  # the OOM killer took one of the run's processes: the code's, or bwrap, an init, the zygote
        assert run.status == "signal" and "memory limit of 256 MB" in run.detail, run


def test_a_killed_bwrap_reads_as_a_signal_not_an_exit_code():
    """Popen reports a process killed by signal N as -N; bwrap reports its command's as 128 + N."""
    assert sandbox_result(-9, b"", b"", None, 0.1).detail == "SIGKILL"
    assert sandbox_result(128 + 9, b"", b"", None, 0.1).detail == "SIGKILL"
    assert sandbox_result(-9, b"", b"", None, 0.1).status == "signal"
    assert sandbox_result(3, b"", b"", None, 0.1).status == "exit_error"


def test_the_sandboxs_own_init_gives_no_way_around_the_filter(sandbox):
    """Code that can write its PID 1's memory could run as it: that init must be filtered too
    (bwrap's), or out of the code's reach (a forked run's init holds capabilities the code lacks)."""
    source = (
        "def init(n):\n"
        "    status = dict(line.split(':', 1) for line in open('/proc/1/status').read().splitlines())\n"
        "    try:\n"
        "        open('/proc/1/mem', 'r+b').close()\n"
        "        writable = True\n"
        "    except OSError:\n"
        "        writable = False\n"
        "    return writable, status['Seccomp'].strip(), status['CapEff'].strip()\n"
    )
    run, _ = attack(sandbox, source, "init(1)")
    writable, seccomp, caps = eval(run.outputs[0])  # noqa: S307 - our own test's output
    assert not writable or (seccomp == "2" and int(caps, 16) == 0), run.outputs
