"""Sandboxes forked from a warm interpreter: `Sandbox.run_python` without an interpreter start per run.

A `Sandbox` run execs bubblewrap and a fresh Python, ~15 ms of CPU before the code's first line:
most of the cost of running one function on a few inputs. A `ForkServer` starts `size` zygotes,
each a Python inside one long-lived bubblewrap sandbox (the same command line as `Sandbox`,
except that the zygote may create user namespaces), with standard-library modules preloaded.
Each `run_python` forks a zygote, and the fork builds a sandbox of its own before the code runs
(`synth.sandbox.zygote` says how): its own PID, mount, network, IPC, UTS, cgroup and user namespaces
(under the zygote's), a private /tmp tmpfs and /proc, the rlimits, no capabilities and no way to
create user namespaces; when its init exits, everything it started dies with it. Runs never
share a process, a namespace of their own or a writable file, and the zygote holds nothing from
the host (it started with an empty environment, in the same outer sandbox) nor from earlier
runs: a run's program (unless it is one of the server's `trusted` ones, compiled once at
start), stdin, stdout and stderr go to it as file descriptors it only hands on, and back comes
a pidfd of the run's init, through which the wall clock and the output cap are enforced here,
as for `Sandbox`. Each run loads the same seccomp filter as a bwrap run before its code, joins
a session keyring of its own, and its zygote's memory cgroup (one per zygote, which serves one
run at a time) bounds all of the run's memory.

The interpreter's start-up environment (PYTHONHASHSEED, say) is the server's `env`, fixed when
its zygotes start; a run's `env` only fills `os.environ`, and one that names a different
PYTHONHASHSEED is refused, since it would not take effect. Thread-safe: concurrent runs take
different zygotes, waiting for one to be free.
"""

from __future__ import annotations

import logging
import marshal
import os
import queue
import select
import signal
import socket
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path

from synth.sandbox.bwrap import (
    NEVER_UNSANDBOXED,
    SANDBOX_ENV,
    TEARDOWN_S,
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    collect,
    kill_sandbox,
    killed_for_memory,
    memfd,
    probe,
    program_too_large,
    read_init_pid,
    sandbox_result,
)
from synth.sandbox.seccomp import syscall_number
from synth.sandbox.zygote import DONE, MAX_REQUEST, READY, STARTED

PRELOAD = ("collections", "functools", "itertools", "math", "operator", "re", "string", "types")
"""Standard-library modules every zygote imports once, so runs start with them (trusted code only)."""

log = logging.getLogger(__name__)

_START_ENV_KEYS = ("PYTHONHASHSEED",)
_ZYGOTE_GRACE_S = 2.0  # past a run's own wall clock, how long the zygote may take to answer
_START_S = 30.0  # for a zygote to start serving (an interpreter start and imports: ~30 ms idle)


def start_fork_server(sandbox: Sandbox, size: int = 1, env: dict[str, str] | None = None,
                      preload: tuple[str, ...] = PRELOAD, trusted: tuple[str, ...] = ()) -> ForkServer | None:  # fmt: skip
    """A `ForkServer`, or None where its zygotes cannot build sandboxes here (a warning says so: the
    caller then runs each program in its own bubblewrap sandbox, still sandboxed, only slower).

    A stage starts its server in `setup()` and closes it in `teardown()`, on the worker."""
    try:
        return ForkServer(sandbox, size, env, preload, trusted)
    except SandboxUnavailable as exc:
        log.warning("no fork server here (%s): one bubblewrap sandbox and interpreter per function", exc)
        return None


@cache
def zygote_source() -> str:
    return (Path(__file__).parent / "zygote.py").read_text()


class ForkServer:
    """`size` zygotes for `sandbox`'s limits and interpreter; `run_python` as `Sandbox.run_python`.

    Use as a context manager (or call `close`): the zygotes are processes.
    """

    def __init__(self, sandbox: Sandbox, size: int = 1, env: dict[str, str] | None = None,
                 preload: tuple[str, ...] = PRELOAD, trusted: tuple[str, ...] = ()):  # fmt: skip
        """`trusted`: programs of ours (the case harness, say) that the zygotes compile once; any
        other program is compiled in its own run, under its limits."""
        self.sandbox, self.env = sandbox, dict(env or {})
        self._trusted = {source: index for index, source in enumerate(trusted)}
        config = {"limits": sandbox.rlimits(), "tmpfs_mb": sandbox.limits.tmpfs_mb, "preload": list(preload),
                  "seccomp": sandbox.seccomp, "keyctl": syscall_number("keyctl"), "trusted": list(trusted)}  # fmt: skip
        argv = sandbox.python_argv(zygote_source()) + [marshal.dumps(config).hex()]
        self._zygotes = [_Zygote(sandbox, argv, self.env) for _ in range(size)]
        self._idle: queue.Queue[_Zygote] = queue.Queue()
        try:
            for zygote in self._zygotes:  # all start at once: ~20 ms sooner with two
                zygote.launch()
            for zygote in self._zygotes:
                zygote.await_start()
                self._idle.put(zygote)
            probe(self.run_python, sandbox.python)
        except BaseException:
            self.close()
            raise

    def run_python(self, code: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> SandboxResult:
        """Run Python `code` in a fresh sandbox forked from a zygote; returns once all of it is gone.

        A zygote that stopped is started again first; where that is refused, SandboxUnavailable."""
        env = env or {}
        for key in _START_ENV_KEYS:
            if key in env and env[key] != self.env.get(key):
                raise ValueError(
                    f"env {key}={env[key]!r}: this fork server's interpreters started with "
                    f"{key}={self.env.get(key)!r}; start a ForkServer with env={{{key!r}: ...}} for another"
                )
        too_large = program_too_large(code, self.sandbox.limits)
        if too_large:
            return too_large
        zygote = self._idle.get()
        try:
            return zygote.run(self._trusted.get(code, code), stdin, {**SANDBOX_ENV, **self.env, **env},
                              self.sandbox.limits)  # fmt: skip
        finally:
            self._idle.put(zygote)

    def close(self) -> None:
        for zygote in self._zygotes:  # all told at once, then each waited for
            zygote.end_requests()
        for zygote in self._zygotes:
            zygote.stop()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ZygoteLost(Exception):
    """The zygote died or stopped answering."""


class _Zygote:
    """One zygote process in its outer sandbox; restarted after it fails to answer in time.

    A run's stdin, stdout and stderr go to the zygote as fds, and back comes a pidfd of the run's
    init: the wall clock and the output cap are enforced here, as for a bwrap run."""

    def __init__(self, sandbox: Sandbox, argv: list[str], env: dict[str, str]):
        self.sandbox, self.argv, self.env = sandbox, argv, env
        self.process: subprocess.Popen | None = None
        self.init_pid: int | None = None

    def start(self) -> None:
        self.launch()
        self.await_start()

    def launch(self) -> None:
        """Start the zygote's sandbox; `await_start` waits for its init."""
        self.control, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._info_read, info_write = os.pipe()
        self.stderr = tempfile.TemporaryFile()
        # A zygote serves one run at a time: its cgroup is the run's. The zygote's own ~25 MB count
        # in it too (a run shares most of those pages, copy-on-write).
        self.cgroup = self.sandbox.memory_cgroup(self.sandbox.limits.memory_mb)
        try:
            command = self.sandbox.command(self.argv, self.env, info_write, prlimit=False, user_namespaces=True)
            self.process = self.sandbox.start_process(command, zygote_end.fileno(), (info_write,), subprocess.DEVNULL,
                                                      self.stderr, self.cgroup)  # fmt: skip
        except BaseException:
            self.cgroup and self.cgroup.remove()
            raise
        finally:
            os.close(info_write)
            zygote_end.close()

    def await_start(self) -> None:
        """Wait until the zygote serves; refuse with its reason if it cannot."""
        self.init_pid = read_init_pid(self._info_read, time.monotonic() + TEARDOWN_S)
        if self._readable(time.monotonic() + _START_S) and self.control.recv(64) == READY:
            return
        why = self._stderr_tail()
        self.stop()
        raise SandboxUnavailable(f"a fork server's zygote did not start: {why}; {NEVER_UNSANDBOXED}")

    def run(self, program: str | int, stdin: bytes, env: dict[str, str], limits: SandboxLimits) -> SandboxResult:
        """`program`: source, or the index of a trusted program the zygote compiled."""
        if self.process is None:
            self.start()
        started = time.monotonic()
        deadline = started + limits.wall_s
        oom_kills = self.cgroup.oom_kills() if self.cgroup else 0
        request = marshal.dumps((program if isinstance(program, int) else None, env))
        if len(request) > MAX_REQUEST:
            raise ValueError(f"an env of {len(request)} bytes; a fork server takes up to {MAX_REQUEST}")
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        try:
            fds = [memfd(stdin), out_w, err_w] + ([] if isinstance(program, int) else [memfd(program.encode())])
            try:
                socket.send_fds(self.control, [request], fds)
            finally:
                for fd in fds:
                    os.close(fd)
            pidfd = self._started(deadline + _ZYGOTE_GRACE_S)
            try:
                stdout, stderr, stopped = collect(out_r, err_r, deadline, limits.output_kb << 10)
                returncode = None if stopped else self._done(deadline)
                if returncode is None:  # past the wall clock or the output cap: the whole run goes
                    stopped = stopped or "timeout"
                    _kill(pidfd)
                    returncode = self._done(time.monotonic() + _ZYGOTE_GRACE_S)
            finally:
                os.close(pidfd)
            if returncode is None:
                raise _ZygoteLost
        except (OSError, _ZygoteLost):  # its whole sandbox goes; a fresh zygote for the next run
            why = self._stderr_tail()
            out_of_memory = self._out_of_memory(oom_kills)
            self.stop()
            stopped = "timeout" if time.monotonic() - started >= limits.wall_s else None
            result = sandbox_result(70, b"", f"the fork server's zygote stopped: {why}".encode(), stopped,
                                    time.monotonic() - started)  # fmt: skip
            return killed_for_memory(result, limits) if out_of_memory else result
        finally:
            os.close(out_r)
            os.close(err_r)
        result = sandbox_result(returncode, stdout, stderr, stopped, time.monotonic() - started)
        return killed_for_memory(result, limits) if self._out_of_memory(oom_kills) else result

    def _out_of_memory(self, kills_before: int) -> bool:
        """Whether the OOM killer killed a process of this zygote's cgroup (its run's) since then."""
        return self.cgroup is not None and self.cgroup.oom_kills() > kills_before

    def _started(self, deadline: float) -> int:
        """The pidfd of the run's init."""
        if not self._readable(deadline):
            raise _ZygoteLost
        message, fds, _, _ = socket.recv_fds(self.control, 64, 1)
        if message != STARTED or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise _ZygoteLost
        return fds[0]

    def _done(self, deadline: float) -> int | None:
        """The run's exit code once all of it is gone; None if the zygote has not said by `deadline`."""
        if not self._readable(deadline):
            return None
        message = self.control.recv(64)
        if len(message) != DONE.size:
            raise _ZygoteLost
        return DONE.unpack(message)[0]

    def _readable(self, deadline: float) -> bool:
        return bool(select.select([self.control], [], [], max(deadline - time.monotonic(), 0))[0])

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()[-300:] or "no message"

    def end_requests(self) -> None:
        """Close the control socket: an idle zygote then exits by itself."""
        if self.process is not None:
            self.control.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.end_requests()
        try:
            self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        kill_sandbox(self.process, self.init_pid)
        if self.cgroup is not None:
            self.cgroup.remove()
        self.stderr.close()
        self.process = self.init_pid = None


def _kill(pidfd: int) -> None:
    """SIGKILL a run's init (and so everything in its PID namespace) through its pidfd."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
