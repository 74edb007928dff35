"""The program that runs INSIDE the sandbox: one function, all its inputs, one JSON line each.

`generators.code.execute` passes this file's text to the sandboxed interpreter (`python -S -c`),
so it imports little: builtin modules (`marshal`, `_json`, `_signal`, `posix`, `time`), `select`, `os` (frozen,
~0.3 ms), which every interpreter started with `site` has, as some modules expect
(`genericpath` imported before `os` fails on a circular import), and `_ctypes` for one `prctl`
(a fork server's zygote has these already). It cannot import the project, which is not there.

stdin: `marshal.dumps((source, name, calls, case_timeout_s, max_output_chars))`, `calls` a list
of (args tuple, kwargs dict).

stdout, one JSON array of two strings per line: first `["loaded", ""]` or `["load_error", why]`,
then `[status, text]` per call, in order; or, at any point, `["tampered", why]` and nothing more.
Statuses:
- `ok`: text is `repr(result)`, and the result is a literal (`ast.literal_eval` gives it back);
- `raised`: text is `"ExceptionType: message"`;
- `timeout`: the call ran past `case_timeout_s` (its process was killed);
- `unrepresentable`: the result's repr is not a Python literal (an object, a nan, a frozenset...);
- `too_long`: the repr is longer than `max_output_chars`.

The result channel is out of the function's reach. This process (the harness) reads its stdin to
the end, closes it, makes itself non-dumpable (no other process of the sandbox may open its
`/proc/PID/mem` or `/proc/PID/fd`; ptrace and process_vm_writev are denied by the seccomp
filter anyway) and never runs a line of the function's module: it forks one child that loads
the source, then one child per call, each in a process group of its own. A child's stdout is
a pipe back to the harness; it sends one marshal frame, `(status, text)`, and exits. The
harness checks the frame and writes the line on its own stdout, which no child holds. A child
that writes anything else on its pipe, or exits cleanly without a frame, is reported as
`tampered` (the issue's example, writing harness lines on fd 1, is one). What a child can still
do is lie about its own call: send a well-formed frame and exit, as if it had returned that
value; the static check (`generators.code.static_check`) keeps code that reaches for
descriptors out of the corpus. A child killed by a signal (a crash, SIGXCPU) or exiting with
an error code ends the whole run the same way, as one sandboxed process would.

Each call runs on a fresh execution of the source in a fresh process (imports are cached,
module-level state and mutable defaults are not, nor processes a call left behind: its group is
killed), so a case's output does not depend on the calls before it. What the function prints
goes nowhere: `sys.stdout` and `sys.stderr` are swapped for a sink.
"""

import _json
import _signal
import marshal
import os
import posix
import select
import sys
import time

_STATUSES = ("ok", "raised", "timeout", "unrepresentable", "too_long")
_PR_SET_DUMPABLE, _RTLD_NOW = 4, 2


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _is_literal(value, depth=0):
    """Same rule as generators.code.calls.is_literal (this file cannot import it)."""
    kind = type(value)
    if depth > 20:
        return False
    if kind in (int, str, bytes, bool, type(None)):
        return kind is not int or value.bit_length() < 4000
    if kind is float:
        return value - value == 0.0  # false for nan and the infinities
    if kind is complex:
        return value.real - value.real == 0.0 and value.imag - value.imag == 0.0
    if kind in (tuple, list) or (kind is set and value):
        return all(_is_literal(v, depth + 1) for v in value)
    if kind is dict:
        return all(_is_literal(k, depth + 1) and _is_literal(v, depth + 1) for k, v in value.items())
    return False


def _emit(status, text):
    line = '["' + status + '",' + _json.encode_basestring_ascii(text) + "]\n"
    posix.write(1, line.encode("ascii"))


def _describe(exc):
    try:
        return (type(exc).__name__ + ": " + str(exc)).strip()
    except BaseException:
        return type(exc).__name__


# ---------------------------------------------------------------- in the worker: the function's code


def _load(code, name):
    namespace = {"__name__": "__case__"}
    exec(code, namespace)
    return namespace[name]


def _loaded(code, name, limit):
    try:
        _load(code, name)
    except BaseException as exc:
        return "load_error", _describe(exc)[:limit]
    return "loaded", ""


def _called(code, name, args, kwargs, limit):
    try:
        result = _load(code, name)(*args, **kwargs)
    except BaseException as exc:  # the function's own exceptions, SystemExit included
        return "raised", _describe(exc)[:limit]
    if not _is_literal(result):
        return "unrepresentable", type(result).__name__
    text = repr(result)
    return ("ok" if len(text) <= limit else "too_long"), text[:limit]


def _send(frame):
    data = marshal.dumps(frame, 0)  # version 0: no references, so one encoding per value
    data = len(data).to_bytes(4, "little") + data
    while data:
        data = data[posix.write(1, data) :]


def _worker(write_end, read_end, code, name, calls, limit):
    """The forked worker: stdout is the pipe; the load's frame, then one per call; never returns."""
    try:
        os.setpgid(0, 0)
        _set_dumpable(1)  # its own /proc/self as in any process; the harness stays private
        os.dup2(write_end, 1)
        os.close(write_end)
        os.close(read_end)
        sys.stdout = sys.stderr = _Sink()
        _send(_loaded(code, name, limit))
        for args, kwargs in calls:
            _send(_called(code, name, args, kwargs, limit))
        exit_code = 0
    except BaseException:
        exit_code = 70
    os._exit(exit_code)


# ---------------------------------------------------------------- in the harness: never the function's code


class _Worker:
    """A forked worker running calls from some index on; its frames, checked one at a time."""

    def __init__(self, code, name, calls, limit):
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _worker(write_end, read_end, code, name, calls, limit)
        os.close(write_end)
        try:
            os.setpgid(self.pid, self.pid)
        except OSError:
            pass  # it did so itself already, or has exited
        self.pipe, self.pidfd = read_end, os.pidfd_open(self.pid)
        self.buffer, self.exited, self.limit = b"", False, 8 * limit + 64

    def frame(self, allowed, timeout):
        """The next (status, text); ("timeout", "") past `timeout`; ("tampered", why) for anything
        but a frame; None where the worker ended without one (`end` says how)."""
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 4 or len(self.buffer) < 4 + int.from_bytes(self.buffer[:4], "little"):
            if len(self.buffer) >= 4 and int.from_bytes(self.buffer[:4], "little") > self.limit:
                return "tampered", "a result frame longer than any result"
            if self.exited:
                return ("tampered", "a result frame cut short") if self.buffer else None
            if not self._read(deadline):
                return "timeout", ""
        size = int.from_bytes(self.buffer[:4], "little")
        data, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
        try:
            frame = marshal.loads(data)
            well_formed = marshal.dumps(frame, 0) == data
        except (ValueError, EOFError, TypeError):
            well_formed = False
        if not (well_formed and type(frame) is tuple and len(frame) == 2 and frame[0] in allowed
                and type(frame[1]) is str):  # fmt: skip
            return "tampered", "a case's process wrote something other than a result frame"
        return frame

    def _read(self, deadline):
        left = deadline - time.monotonic()
        ready = select.select([self.pipe, self.pidfd], [], [], left)[0] if left > 0 else []
        if not ready:
            return False
        if self.pidfd in ready:  # gone: what it wrote is all there is (its children may hold the pipe)
            os.set_blocking(self.pipe, False)
            self.exited = True
        try:
            while chunk := os.read(self.pipe, 65536):
                self.buffer += chunk
                if not self.exited:
                    break
            else:
                self.exited = True
        except BlockingIOError:
            pass
        return True

    def finish(self):
        """Kill what is left of the worker and its process group; its wait status."""
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, 9)
            except OSError:
                pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.pipe)
        os.close(self.pidfd)
        return status

    def clean_exit(self):
        """Whether the worker wrote nothing more and exited 0 once its last frame was read."""
        while not self.exited:
            self._read(time.monotonic() + 1.0)
        return not self.buffer and self.finish() == 0


def _end_like(status):
    """A worker that died of a signal or exited with an error code ends the run the same way."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code not in (_signal.SIGKILL, _signal.SIGSTOP):
            _signal.signal(-code, _signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    elif code > 0:
        os._exit(code)


def _run_calls(code, name, calls, timeout, limit):
    """Emit the load's line and one per call. A worker that times out is killed, and a new one
    (which loads the source again, silently) takes the calls after it."""
    done, first = 0, True
    while True:
        worker = _Worker(code, name, calls[done:], limit)
        frame = _expect(worker, ("loaded", "load_error"), timeout)
        if frame[0] == "timeout":
            frame = ("load_error", "loading took longer than the case timeout") if first else frame
        if first or frame[0] != "loaded":
            _emit(*frame)
            if frame[0] != "loaded":
                worker.finish()
                if frame[0] != "timeout" or done + 1 == len(calls):
                    return
                done += 1
                continue
        first = False
        while done < len(calls):
            frame = _expect(worker, _STATUSES, timeout)
            _emit(*frame)
            done += 1
            if frame[0] in ("tampered", "timeout"):
                worker.finish()
                break
        else:
            if not worker.clean_exit():
                _emit("tampered", "a case's process wrote past its last result or did not exit cleanly")
            return
        if frame[0] == "tampered" or done == len(calls):
            return


def _expect(worker, allowed, timeout):
    frame = worker.frame(allowed, timeout)
    if frame is None:  # the worker ended without one: a crash or an error exit ends the run alike
        _end_like(worker.finish())
        frame = ("tampered", "a case's process exited without a result")
    return frame


def _set_dumpable(flag):
    """0: no other process of the sandbox may open this one's memory or descriptors through /proc.
    Through `_ctypes` itself: the `ctypes` package costs ~7 ms of CPU to import, `_ctypes` ~0.8."""
    import _ctypes

    prctl = _ctypes.dlsym(_ctypes.dlopen(None, _RTLD_NOW), "prctl")
    if _ctypes.call_function(prctl, (_PR_SET_DUMPABLE, flag, 0, 0, 0)) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE) failed")


def main():
    payload = b""
    while chunk := os.read(0, 1 << 20):
        payload += chunk
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _set_dumpable(0)
    source, name, calls, timeout, limit = marshal.loads(payload)
    del payload
    try:
        code = compile(source, "<function>", "exec")
    except BaseException as exc:
        _emit("load_error", _describe(exc)[:limit])
        return
    _run_calls(code, name, calls, timeout, limit)


if __name__ == "__main__":
    main()
