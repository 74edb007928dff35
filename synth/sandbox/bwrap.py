"""Run untrusted code in a bubblewrap sandbox, or refuse: never anything in between.

`Sandbox.run(argv, stdin)` runs one command (`run_python(code, stdin)`: Python code) and returns
its exit status, stdout and stderr, or why it was stopped. What the command gets:

- its own empty network namespace (a loopback of its own, nothing else: no route anywhere);
- a read-only view of the system (`/usr` and the interpreter's prefix, nothing of `/etc`,
  `/home`, `/root` or the project), a read-only `/` and `/dev`, a fresh `/proc` showing only its
  own processes, and one writable place: a private `/tmp` tmpfs capped at `tmpfs_mb`;
- PID, IPC, UTS, cgroup and user namespaces: it runs as uid/gid 65534 with no capabilities, no
  new privileges (setuid binaries do nothing), and cannot create user namespaces of its own;
- an environment it is given and nothing else: bwrap itself starts with an empty environment,
  so not even `/proc/1/environ` holds the parent's; inherited file descriptors are closed;
- rlimits, applied inside its namespaces by util-linux `prlimit`: CPU seconds, address space,
  processes, file size, open files, no core dumps;
- a seccomp filter (`synth.sandbox.seccomp`, an allow-list after Docker's default profile), loaded by
  bwrap with `--seccomp` before the command starts;
- a session keyring of its own, fresh and empty (`synth.sandbox.launcher` starts every sandbox);
- one memory limit for the whole run, shared memory included: a memory cgroup of its own where
  the host has a writable cgroup v1 memory controller (`synth.sandbox.memory_cgroup`);
- a program-size limit (`program_kb`), checked before the run: `program_too_large`;
- a parent-side wall clock: past `wall_s` the whole sandbox is SIGKILLed: its init (bwrap's
  PID 1 of the namespace), which takes every process inside with it, daemons too. Either way
  `run` returns only once every process of the sandbox is gone (bwrap itself returns as soon as
  the command exits, while its init may still be tearing the namespace down). Should our process
  die, `--die-with-parent` kills the sandbox;
- a cap on stdout + stderr bytes: past `output_kb` the sandbox is killed the same way.

Run as root, bwrap itself runs as the unprivileged host user 65534 (`nobody`, through util-linux
`setpriv`), so the processes in the sandbox are `nobody` on the host too. That is also what makes
the process limit work: Linux does not enforce RLIMIT_NPROC for processes whose real uid is host
root, whatever uid they have inside a user namespace. The catch: the interpreter must be readable
by that user; the default is the running base interpreter when it is, else `/usr/bin/python3`
(a pyenv Python under root's 0700 home is not).

Where bubblewrap is missing or cannot build the sandbox (no unprivileged user namespaces, say),
constructing a `Sandbox` raises `SandboxUnavailable` saying what is missing.

`synth.sandbox.forkserver.ForkServer` builds the same kind of sandbox per run by forking a warm
interpreter that waits inside one of these, sparing each run the interpreter start.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import Field

from synth.sandbox import launcher, memory_cgroup
from synth.errors import SynthError
from synth.sandbox.seccomp import SeccompUnavailable, bpf_file, filter_bpf
from synth.spec import StrictModel

SANDBOX_UID = 65534
"""uid and gid inside the sandbox, and the host user bwrap runs as when we are root."""

SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
"""The whole environment of a sandboxed command, plus what the caller adds."""

SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Top-level system folders, bound read-only (or recreated as symlinks on merged-/usr systems)."""

NEVER_UNSANDBOXED = "untrusted code is never run unsandboxed"
_READ_CHUNK = 65536
TEARDOWN_S = 5.0


class SandboxUnavailable(SynthError):
    """The machine cannot isolate code: untrusted code is refused, never run unsandboxed."""


class SandboxLimits(StrictModel):
    """Resource limits of one sandbox run."""

    wall_s: float = Field(10.0, gt=0, description="Wall clock; past it the parent kills the whole sandbox")
    cpu_s: int = Field(5, ge=1, description="CPU seconds (RLIMIT_CPU): SIGXCPU, then SIGKILL a second later")
    memory_mb: int = Field(512, ge=64, description="Address space of each process (RLIMIT_AS), and the memory "
                           "of the whole run, shared memory included, where the host has a memory cgroup")
    processes: int = Field(16, ge=2, description="Processes and threads inside the sandbox (RLIMIT_NPROC)")
    file_mb: int = Field(8, ge=1, description="Largest file a process may write (RLIMIT_FSIZE)")
    open_files: int = Field(64, ge=16, description="Open file descriptors per process (RLIMIT_NOFILE)")
    tmpfs_mb: int = Field(16, ge=1, description="Size of the private /tmp")
    output_kb: int = Field(1024, ge=1, description="stdout + stderr; past it the sandbox is killed")
    program_kb: int = Field(96, ge=1, le=120, description="Largest Python program (UTF-8 source) a run takes, "
                            "checked before it starts: a bwrap run passes it as one argument, which Linux caps at 128 KB")


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed command ended.

    `status` is one of: "ok" (exit 0), "exit_error" (another exit code), "signal" (killed by a
    signal: a crash, or SIGXCPU/SIGKILL from the CPU limit; `detail` names it), "timeout" (the
    wall clock ran out), "output_limit" (it wrote more than `output_kb`) or "program_too_large"
    (a program over `program_kb`: nothing ran).
    """

    status: str
    detail: str
    returncode: int | None
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Sandbox:
    """A bubblewrap sandbox factory; each `run` is a fresh sandbox. Picklable (plain fields)."""

    def __init__(self, limits: SandboxLimits | None = None, python: str | None = None):
        self.limits = limits or SandboxLimits()
        self.bwrap = _require_tool("bwrap", "the Debian package `bubblewrap` (scripts/setup.sh installs it)")
        self.prlimit = _require_tool("prlimit", "the Debian package `util-linux`")
        as_root = os.geteuid() == 0
        self.launcher = _launcher(_require_tool("setpriv", "the Debian package `util-linux`")) if as_root else []
        self.python = python or default_python(as_root)
        self.binds = _system_binds() + _prefix_bind(self.python)
        try:
            self.seccomp = filter_bpf()
        except SeccompUnavailable as exc:
            raise SandboxUnavailable(f"no seccomp filter: {exc}; {NEVER_UNSANDBOXED}") from exc
        memory_cgroup.warn_if_unavailable()
        probe(self.run_python, self.python)

    # ------------------------------------------------------------ running

    def run(self, argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> SandboxResult:
        """Run `argv` in a fresh sandbox with `stdin` as its input and `env` added to SANDBOX_ENV.

        Returns once every process of the sandbox has exited.
        """
        return self._run(argv, stdin, env, prlimit=True)

    def run_python(self, code: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> SandboxResult:
        """Run Python `code` like `run`. The interpreter sets the rlimits itself before `code`
        runs: the same limits as `prlimit`, one exec fewer (~2.5 ms of a ~10 ms sandbox start)."""
        too_large = program_too_large(code, self.limits)
        if too_large:
            return too_large
        return self._run(self.python_argv(self._rlimit_lines() + code), stdin, env, prlimit=False)

    def _run(self, argv: list[str], stdin: bytes, env: dict[str, str] | None, prlimit: bool) -> SandboxResult:
        started = time.monotonic()
        deadline = started + self.limits.wall_s
        info_read, info_write = os.pipe()
        seccomp_fd = bpf_file(self.seccomp)
        cgroup = self.memory_cgroup(self.limits.memory_mb)
        try:
            with _stdin_file(stdin) as stdin_fd:
                command = self.command(argv, env, info_write, prlimit, seccomp_fd=seccomp_fd)
                process = self.start_process(command, stdin_fd, (info_write, seccomp_fd), cgroup=cgroup)
        except BaseException:
            cgroup and cgroup.remove()
            raise
        finally:
            os.close(info_write)
            os.close(seccomp_fd)
        init_pid = None
        try:
            init_pid = read_init_pid(info_read, deadline)
            stdout, stderr, stopped = self._collect(process, deadline)
        finally:
            kill_sandbox(process, init_pid)
            out_of_memory = bool(cgroup and cgroup.oom_kills())
            cgroup and cgroup.remove()
        result = sandbox_result(process.returncode, stdout, stderr, stopped, time.monotonic() - started)
        return killed_for_memory(result, self.limits) if out_of_memory else result

    @staticmethod
    def memory_cgroup(limit_mb: int) -> memory_cgroup.MemoryCgroup | None:
        """A memory cgroup for one sandbox (`synth.sandbox.memory_cgroup`), or None where the host has none."""
        return memory_cgroup.MemoryCgroup(limit_mb) if memory_cgroup.available() else None

    def start_process(self, command: list[str], stdin_fd: int, pass_fds: tuple[int, ...], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, cgroup: memory_cgroup.MemoryCgroup | None = None) -> subprocess.Popen:  # fmt: skip
        """Start `command` (from `command()`, which names `pass_fds`) with an empty environment, in a
        session of its own, a fresh session keyring (`synth.sandbox.launcher`) and `cgroup`."""
        try:
            return launcher.popen(
                command, cgroup, stdin=stdin_fd, stdout=stdout, stderr=stderr, env={},
                close_fds=True, pass_fds=pass_fds, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start {command[0]}: {exc}; {NEVER_UNSANDBOXED}") from exc

    def python_argv(self, code: str) -> list[str]:
        """The interpreter running `code`: no site, no user site, no bytecode written."""
        return [self.python, "-S", "-s", "-B", "-c", code]

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """(soft, hard) per limit; the CPU limit's hard one a second later, so SIGXCPU comes first."""
        lim = self.limits
        return {"CPU": (lim.cpu_s, lim.cpu_s + 1), "AS": (lim.memory_mb << 20,) * 2,
                "NPROC": (lim.processes,) * 2, "FSIZE": (lim.file_mb << 20,) * 2,
                "NOFILE": (lim.open_files,) * 2, "CORE": (0, 0)}  # fmt: skip

    def _rlimit_lines(self) -> str:
        """One line of Python that sets `rlimits` on its own process (children inherit them)."""
        calls = "; ".join(f"_r.setrlimit(_r.RLIMIT_{name}, {limits})" for name, limits in self.rlimits().items())
        return f"import resource as _r; {calls}; del _r\n"

    def command(self, argv: list[str], env: dict[str, str] | None = None, info_fd: int | None = None,
                prlimit: bool = True, user_namespaces: bool = False, seccomp_fd: int | None = None) -> list[str]:  # fmt: skip
        """The full command line: bwrap (as the sandbox user when we are root), prlimit, `argv`.

        `user_namespaces=True` lets `argv` create user namespaces: only for a fork server's
        zygote (`synth.sandbox.forkserver`), which builds each sandbox's in a namespace of its own, and
        which alone runs without `seccomp_fd` (the filter, `synth.sandbox.seccomp`, that bwrap loads
        before it execs the command): each forked run loads the filter before its code.

        bwrap writes its init's pid to `info_fd`. The rlimits are set inside the namespaces, by
        `prlimit` (or, with `prlimit=False`, by `argv` itself: `run_python`): set on bwrap itself,
        the process limit would count every process of the sandbox user on the host, other
        sandboxes included (and the parent cannot set them on the sandbox from outside without
        CAP_SYS_RESOURCE, which containers often lack).
        """
        lim = self.limits
        isolation = [
            "--unshare-all", "--unshare-user", *([] if user_namespaces else ["--disable-userns"]), "--uid", str(SANDBOX_UID), "--gid",
            str(SANDBOX_UID), "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox",
        ]  # fmt: skip
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        info += ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        filesystem = [
            *self.binds, "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
            "--size", str(lim.tmpfs_mb << 20), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp",
        ]  # fmt: skip
        variables = {**SANDBOX_ENV, **(env or {})}
        environment = ["--clearenv"] + [arg for k, v in variables.items() for arg in ("--setenv", k, v)]
        rlimits = [self.prlimit, *(f"--{name.lower()}={soft}:{hard}" for name, (soft, hard) in self.rlimits().items()),
                   "--"] if prlimit else []  # fmt: skip
        return [*self.launcher, self.bwrap, *isolation, *info, *filesystem, *environment, "--", *rlimits, *argv]

    def _collect(self, process: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, str | None]:
        fds = (process.stdout.fileno(), process.stderr.fileno())
        out, err, stopped = collect(*fds, deadline, self.limits.output_kb << 10)
        if stopped is None and not _wait(process, deadline):
            stopped = "timeout"
        return out, err, stopped


def collect(out_fd: int, err_fd: int, deadline: float, budget: int) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until both close; stop early ("timeout", "output_limit") at the
    deadline or past `budget` bytes. Closes neither fd."""
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    stopped = None
    with selectors.DefaultSelector() as selector:
        for fd in (out_fd, err_fd):
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and stopped is None:
            left = deadline - time.monotonic()
            events = selector.select(left) if left > 0 else []
            if not events:
                stopped = "timeout"
            for key, _ in events:
                data = os.read(key.fd, _READ_CHUNK)
                if not data:
                    selector.unregister(key.fileobj)
                chunks[key.fd].append(data[: max(budget, 0)])
                budget -= len(data)
                if budget < 0:
                    stopped = "output_limit"
    return b"".join(chunks[out_fd]), b"".join(chunks[err_fd]), stopped


def probe(run_python, python: str) -> None:
    """Run a tiny program through `run_python`; refuse unless it ran as a non-root uid with no capabilities."""
    code = "import os\nprint(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])"
    result = run_python(code)
    if not result.ok:
        raise SandboxUnavailable(
            f"bubblewrap could not start a sandbox ({result.status}: "
            f"{result.stderr.decode(errors='replace').strip() or result.detail}). It needs unprivileged "
            "user namespaces (sysctl user.max_user_namespaces > 0; on Debian also "
            "kernel.unprivileged_userns_clone=1) and an interpreter the sandbox user can read; "
            f"interpreter: {python}; {NEVER_UNSANDBOXED}"
        )
    uid, caps = result.stdout.decode().split()
    if int(uid) == 0 or int(caps, 16) != 0:
        raise SandboxUnavailable(
            f"the sandbox runs with uid {uid} and capabilities {caps}; expected a non-root uid and none"
        )


def default_python(as_other_user: bool) -> str:
    """The base interpreter of this Python if the sandbox user can read it, else the system python3."""
    base = str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())
    if not as_other_user or _readable_by_others(base):
        return base
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None or not _readable_by_others(system):
        raise SandboxUnavailable(
            f"no Python interpreter the sandbox user (uid {SANDBOX_UID}) can read: {base} is not, and there is "
            "no /usr/bin/python3; install the Debian package `python3-minimal` or pass `python=`"
        )
    return str(Path(system).resolve())


def _readable_by_others(path: str) -> bool:
    """Whether a user with no relation to the file's owner can traverse to it and read it."""
    target = Path(path)
    for folder in target.parents:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(target).st_mode & stat.S_IROTH)


def _launcher(setpriv: str) -> list[str]:
    """Runs bwrap as the sandbox user. An exec of setpriv, not Popen(user=...): changing user in
    the child forbids vfork, and a full fork of a large parent (a Ray worker) costs ~100 ms."""
    uid = str(SANDBOX_UID)
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--"]


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/local/bin")
    if path is None:
        raise SandboxUnavailable(f"`{name}` not found; the sandbox needs {package}; {NEVER_UNSANDBOXED}")
    return path


def _system_binds() -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    for folder in SYSTEM_DIRS:
        if os.path.islink(folder):
            binds += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            binds += ["--ro-bind", folder, folder]
    return binds


def _prefix_bind(python: str) -> list[str]:
    """An interpreter outside /usr (pyenv, conda...) needs its install prefix: bin/.. of it."""
    prefix = Path(python).resolve().parent.parent
    return [] if prefix == Path("/usr") or Path("/usr") in prefix.parents else ["--ro-bind", str(prefix), str(prefix)]


def memfd(data: bytes) -> int:
    """An in-memory file holding `data`, positioned at its start; the caller closes it."""
    fd = os.memfd_create("sandbox-stdin")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _stdin_file:
    """stdin as an in-memory file, so a command that never reads it cannot block the parent."""

    def __init__(self, data: bytes):
        self.data, self.fd = data, None

    def __enter__(self) -> int:
        if not self.data:
            return subprocess.DEVNULL
        self.fd = memfd(self.data)
        return self.fd

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _wait(process: subprocess.Popen, deadline: float) -> bool:
    try:
        process.wait(timeout=max(deadline - time.monotonic(), 0))
        return True
    except subprocess.TimeoutExpired:
        return False


def read_init_pid(fd: int, deadline: float) -> int | None:
    """The host pid of the sandbox's init (its PID 1), from bwrap's --info-fd JSON; closes `fd`."""
    data = b""
    try:
        while select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def kill_sandbox(process: subprocess.Popen, init_pid: int | None) -> None:
    """SIGKILL the sandbox's init unless bwrap is done, reap bwrap, and wait for that init to exit:
    a PID namespace's init exits only after every other process in it, so then all are gone."""
    if process.poll() is None and init_pid is not None:
        try:
            os.kill(init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=TEARDOWN_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    if init_pid is not None:
        _wait_exited(init_pid, time.monotonic() + TEARDOWN_S)


def _wait_exited(pid: int, deadline: float) -> None:
    """Until `pid` is a zombie or gone (it is not our child: its parent, or the host's init, reaps it)."""
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.001)


def program_too_large(code: str, limits: SandboxLimits) -> SandboxResult | None:
    """The result of a program over `limits.program_kb`, which is not run; None for one that fits."""
    size = len(code.encode("utf-8", "surrogateescape"))
    if size <= limits.program_kb << 10:
        return None
    detail = f"a program of {size} bytes; the limit is {limits.program_kb} KB"
    return SandboxResult("program_too_large", detail, None, b"", detail.encode(), 0.0)


def sandbox_result(returncode: int, stdout: bytes, stderr: bytes, stopped: str | None, seconds: float) -> SandboxResult:
    """bwrap reports a command killed by signal N as exit code 128 + N."""
    if stopped:
        status, detail = stopped, f"killed by the parent: {stopped}"
    elif returncode == 0:
        status, detail = "ok", ""
    elif returncode > 128 and returncode - 128 in signal.valid_signals():
        status, detail = "signal", signal.Signals(returncode - 128).name
    elif returncode < 0 and -returncode in signal.valid_signals():  # bwrap itself was killed
        status, detail = "signal", signal.Signals(-returncode).name
    else:
        status, detail = "exit_error", f"exit code {returncode}"
    return SandboxResult(status, detail, returncode, stdout, stderr, round(seconds, 4))


def killed_for_memory(result: SandboxResult, limits: SandboxLimits) -> SandboxResult:
    """`result` of a run in whose memory cgroup the OOM killer killed a process. The killer may take
    any of the sandbox's processes (bwrap, an init, a zygote), not only the code's: however it ended,
    the run was killed for its memory."""
    if result.ok or result.status in ("timeout", "output_limit"):
        return result
    detail = f"SIGKILL: the run's memory limit of {limits.memory_mb} MB ran out"
    return replace(result, status="signal", detail=detail)
