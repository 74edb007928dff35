"""BASELINE for bench/sandbox.py only: the case harness before its result channel (one process runs
the function's code and writes the result lines itself, so a function can forge them). Compared
side by side with generators/code/harness.py; never used by the pipeline.

The program that runs INSIDE the sandbox: one function, all its inputs, one JSON line each.

`generators.code.execute` passes this file's text to the sandboxed interpreter (`python -S -c`),
so it imports little: builtin modules (`marshal`, `_json`, `_signal`, `posix`) and `os` (frozen,
~0.3 ms), which every interpreter started with `site` has, as some modules expect: `genericpath`
imported before `os` fails on a circular import. A forked sandbox's zygote has `os` too, so both
kinds of sandbox give the same outputs. It cannot import the project, which is not in the sandbox.

stdin: `marshal.dumps((source, name, calls, case_timeout_s, max_output_chars))`, `calls` a list
of (args tuple, kwargs dict).

stdout, one JSON array of two strings per line: first `["loaded", ""]` or `["load_error", why]`,
then `[status, text]` per call, in order. Statuses:
- `ok`: text is `repr(result)`, and the result is a literal (`ast.literal_eval` gives it back);
- `raised`: text is `"ExceptionType: message"`;
- `timeout`: the call ran past `case_timeout_s` (a SIGALRM inside the call);
- `unrepresentable`: the result's repr is not a Python literal (an object, a nan, a frozenset...);
- `too_long`: the repr is longer than `max_output_chars`.

Each call runs on a fresh execution of the source (imports are cached, module-level state and
mutable defaults are not), so a case's output does not depend on the calls before it. What the
function prints goes nowhere: `sys.stdout` and `sys.stderr` are swapped for a sink.
"""

import _json
import _signal
import marshal
import os  # noqa: F401 - see above
import posix
import sys


class _CaseTimeout(BaseException):
    """Raised by SIGALRM inside a call; a BaseException so `except Exception` does not eat it."""


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _alarm(signum, frame):
    raise _CaseTimeout()


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
    except _CaseTimeout:
        raise
    except BaseException:
        return type(exc).__name__


def _call(code, name, args, kwargs, timeout, limit):
    """(status, text) of one call, on a fresh run of the source: no state left by earlier calls.

    The alarm covers loading, the call, the repr of its result and its exception's message.
    """
    _signal.setitimer(_signal.ITIMER_REAL, timeout)
    try:
        namespace = {"__name__": "__case__"}
        exec(code, namespace)
        status, text = _outcome(namespace[name], args, kwargs, limit)
    except _CaseTimeout:
        status, text = "timeout", ""
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    return status, text[:limit]


def _outcome(fn, args, kwargs, limit):
    try:
        result = fn(*args, **kwargs)
    except _CaseTimeout:
        raise
    except BaseException as exc:  # the function's own exceptions, SystemExit included
        return "raised", _describe(exc)
    if not _is_literal(result):
        return "unrepresentable", type(result).__name__
    text = repr(result)
    return ("ok" if len(text) <= limit else "too_long"), text


def main():
    source, name, calls, timeout, limit = marshal.loads(sys.stdin.buffer.read())
    sys.stdout = sys.stderr = _Sink()
    _signal.signal(_signal.SIGALRM, _alarm)
    try:
        code = compile(source, "<function>", "exec")
        namespace = {"__name__": "__case__"}
        exec(code, namespace)
        namespace[name]
    except BaseException as exc:
        _emit("load_error", _describe(exc)[:limit])
        return
    _emit("loaded", "")
    for args, kwargs in calls:
        _emit(*_call(code, name, args, kwargs, timeout, limit))


if __name__ == "__main__":
    main()
