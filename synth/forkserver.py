"""Sandboxes forked from a warm interpreter: `Sandbox.run_python` without an interpreter start per run.

A `Sandbox` run execs bubblewrap and a fresh Python, ~15 ms of CPU before the code's first line:
most of the cost of running one function on a few inputs. A `ForkServer` starts `size` zygotes,
each a Python inside one long-lived bubblewrap sandbox (the same command line as `Sandbox`,
except that the zygote may create user namespaces), with standard-library modules preloaded.
Each `run_python` forks a zygote, and the fork builds a sandbox of its own before the code runs
(`synth.zygote` says how): its own user, mount, PID, network, IPC, UTS and cgroup namespaces,
a private /tmp tmpfs and /proc, the rlimits, no capabilities and no way to create user
namespaces; when its init exits, everything it started dies with it. Runs never share a
process, a namespace or a writable file, and the zygote holds nothing from the host: it started
with an empty environment, in the same outer sandbox. One thing differs from a bwrap run: a
run's memory starts as a copy of its zygote's, where freed bytes of earlier runs' requests and
outputs may linger; code can read them (never change them: each run has its own copy).

The interpreter's start-up environment (PYTHONHASHSEED, say) is the server's `env`, fixed when
its zygotes start; a run's `env` only fills `os.environ`, and one that names a different
PYTHONHASHSEED is refused, since it would not take effect. Thread-safe: concurrent runs take
different zygotes, waiting for one to be free.
"""

from __future__ import annotations

import marshal
import os
import queue
import select
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path

from synth.sandbox import (
    _READ_CHUNK,
    _TEARDOWN_S,
    SANDBOX_ENV,
    Sandbox,
    SandboxResult,
    SandboxUnavailable,
    _kill_sandbox,
    _read_init_pid,
    _result,
    probe,
)
from synth.zygote import REPLY, STOPPED

PRELOAD = ("collections", "functools", "itertools", "math", "operator", "re", "string", "types")
"""Standard-library modules every zygote imports once, so runs start with them (trusted code only)."""

_START_ENV_KEYS = ("PYTHONHASHSEED",)
_ZYGOTE_GRACE_S = 2.0  # past a run's own wall clock, how long the zygote may take to answer


@cache
def zygote_source() -> str:
    return (Path(__file__).parent / "zygote.py").read_text()


class ForkServer:
    """`size` zygotes for `sandbox`'s limits and interpreter; `run_python` as `Sandbox.run_python`.

    Use as a context manager (or call `close`): the zygotes are processes.
    """

    def __init__(self, sandbox: Sandbox, size: int = 1, env: dict[str, str] | None = None,
                 preload: tuple[str, ...] = PRELOAD):  # fmt: skip
        self.sandbox, self.env = sandbox, dict(env or {})
        limits = sandbox.limits
        config = {"limits": sandbox.rlimits(), "wall_s": limits.wall_s, "tmpfs_mb": limits.tmpfs_mb,
                  "output_kb": limits.output_kb, "preload": list(preload)}  # fmt: skip
        self._argv = sandbox.python_argv(zygote_source()) + [marshal.dumps(config).hex()]
        self._zygotes = [_Zygote(sandbox, self._argv, self.env) for _ in range(size)]
        self._idle: queue.Queue[_Zygote] = queue.Queue()
        try:
            for zygote in self._zygotes:
                zygote.start()
                self._idle.put(zygote)
            probe(self.run_python, sandbox.python)
        except BaseException:
            self.close()
            raise

    def run_python(self, code: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> SandboxResult:
        """Run Python `code` in a fresh sandbox forked from a zygote; returns once all of it is gone."""
        env = env or {}
        for key in _START_ENV_KEYS:
            if key in env and env[key] != self.env.get(key):
                raise ValueError(
                    f"env {key}={env[key]!r}: this fork server's interpreters started with "
                    f"{key}={self.env.get(key)!r}; start a ForkServer with env={{{key!r}: ...}} for another"
                )
        zygote = self._idle.get()
        try:
            return zygote.run(code, stdin, {**SANDBOX_ENV, **self.env, **env}, self.sandbox.limits.wall_s)
        finally:
            self._idle.put(zygote)

    def close(self) -> None:
        for zygote in self._zygotes:
            zygote.stop()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Zygote:
    """One zygote process in its outer sandbox; restarted after it fails to answer in time."""

    def __init__(self, sandbox: Sandbox, argv: list[str], env: dict[str, str]):
        self.sandbox, self.argv, self.env = sandbox, argv, env
        self.process: subprocess.Popen | None = None
        self.init_pid: int | None = None

    def start(self) -> None:
        info_read, info_write = os.pipe()
        self.stderr = tempfile.TemporaryFile()
        try:
            command = self.sandbox.command(self.argv, self.env, info_write, prlimit=False, user_namespaces=True)
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env={},
                close_fds=True, pass_fds=(info_write,), start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start {command[0]}: {exc}; untrusted code is never run unsandboxed")
        finally:
            os.close(info_write)
        self.init_pid = _read_init_pid(info_read, time.monotonic() + _TEARDOWN_S)

    def run(self, code: str, stdin: bytes, env: dict[str, str], wall_s: float) -> SandboxResult:
        if self.process is None:
            self.start()
        started = time.monotonic()
        request = marshal.dumps((code, stdin, env))
        try:
            self.process.stdin.write(len(request).to_bytes(4, "little") + request)
            self.process.stdin.flush()
            reply = self._read_reply(started + wall_s + _ZYGOTE_GRACE_S)
        except (BrokenPipeError, IndexError, ValueError):  # IndexError, ValueError: not a reply
            reply = None
        if reply is None:  # the zygote died or hung: its whole sandbox goes, a fresh one next run
            why = self._stderr_tail()
            self.stop()
            stopped = "timeout" if time.monotonic() - started >= wall_s else None
            return _result(70, b"", f"the fork server's zygote stopped: {why}".encode(), stopped,
                           time.monotonic() - started)  # fmt: skip
        return reply

    def _read_reply(self, deadline: float) -> SandboxResult | None:
        header = self._read_exactly(REPLY.size, deadline)
        if header is None:
            return None
        returncode, stopped, seconds, out_size, err_size = REPLY.unpack(header)
        if out_size + err_size > (self.sandbox.limits.output_kb << 10) + _READ_CHUNK:
            return None  # the zygote caps what it relays: this is not one of its replies
        output = self._read_exactly(out_size + err_size, deadline)
        if output is None:
            return None
        return _result(returncode, output[:out_size], output[out_size:], STOPPED[stopped], seconds)

    def _read_exactly(self, size: int, deadline: float) -> bytes | None:
        fd, data = self.process.stdout.fileno(), b""
        while len(data) < size:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
                return None
            chunk = os.read(fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()[-300:] or "no message"

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.stdin.close()  # end of requests: an idle zygote exits by itself
        try:
            self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        self.process.stdin = None
        _kill_sandbox(self.process, self.init_pid)
        self.stderr.close()
        self.process = self.init_pid = None
