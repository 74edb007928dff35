"""The program that runs INSIDE the sandbox for `code_coverage`: which lines of the function each call runs.

Like `generators.code.harness` it is passed as text to the sandboxed interpreter (`python -S -c`)
and imports only builtin modules and `os`; it cannot import the project.

stdin: `marshal.dumps((source, name, calls, case_timeout_s, max_output_chars))`, `calls` a list of
(args tuple, kwargs dict).

stdout, one JSON array per line: first `["lines", "", [the function's executable line numbers]]`
or `["load_error", why, []]`, then per call `[status, outcome, [line numbers it ran]]`, status one of
`ok` (outcome: the result's repr, cut to max_output_chars), `raised` (outcome: the exception's
type), `timeout` or `unrepresentable` (outcome ""). Lines are those of the function and of what is
nested in it, not the function's `def` line; each call runs on a fresh execution of the source.
"""

import _json
import _signal
import marshal
import os  # noqa: F401 - as in the harness: some modules expect it imported first
import posix
import sys


class _CaseTimeout(BaseException):
    pass


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _alarm(signum, frame):
    raise _CaseTimeout()


def _emit(status, text, lines=()):
    line = '["' + status + '",' + _json.encode_basestring_ascii(text) + ",[" + ",".join(map(str, lines)) + "]]\n"
    posix.write(1, line.encode("ascii"))


def _code_lines(code, first):
    """Executable lines of a code object and the code nested in it, but the `def` line `first`."""
    lines = {line for _, _, line in code.co_lines() if line is not None and line != first}
    for const in code.co_consts:
        if type(const) is type(code):
            lines |= _code_lines(const, first)
    return lines


def _codes(code):
    found = {code}
    for const in code.co_consts:
        if type(const) is type(code):
            found |= _codes(const)
    return found


def _is_literal(value, depth=0):
    """Same rule as generators.code.calls.is_literal."""
    kind = type(value)
    if depth > 20:
        return False
    if kind in (int, str, bytes, bool, type(None)):
        return kind is not int or value.bit_length() < 4000
    if kind is float:
        return value - value == 0.0
    if kind is complex:
        return value.real - value.real == 0.0 and value.imag - value.imag == 0.0
    if kind in (tuple, list) or (kind is set and value):
        return all(_is_literal(v, depth + 1) for v in value)
    if kind is dict:
        return all(_is_literal(k, depth + 1) and _is_literal(v, depth + 1) for k, v in value.items())
    return False


def _run(code, name, ours, args, kwargs, timeout, limit):
    ran = set()

    def trace(frame, event, arg):
        if frame.f_code not in ours:
            return None
        if event == "line":
            ran.add(frame.f_lineno)
        return trace

    _signal.setitimer(_signal.ITIMER_REAL, timeout)
    try:
        namespace = {"__name__": "__case__"}
        exec(code, namespace)
        fn = namespace[name]
        sys.settrace(trace)
        try:
            result = fn(*args, **kwargs)
        finally:
            sys.settrace(None)
        if _is_literal(result):
            status, outcome = "ok", repr(result)[:limit]
        else:
            status, outcome = "unrepresentable", ""
    except _CaseTimeout:
        sys.settrace(None)
        status, outcome = "timeout", ""
    except BaseException as exc:  # the function's own exceptions
        status, outcome = "raised", type(exc).__name__
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    return status, outcome, sorted(ran)


def main():
    source, name, calls, timeout, limit = marshal.loads(sys.stdin.buffer.read())
    sys.stdout = sys.stderr = _Sink()
    _signal.signal(_signal.SIGALRM, _alarm)
    try:
        code = compile(source, "<function>", "exec")
        namespace = {"__name__": "__case__"}
        exec(code, namespace)
        fn_code = namespace[name].__code__
    except BaseException as exc:
        _emit("load_error", type(exc).__name__)
        return
    ours = _codes(fn_code)  # constants of the compiled module: the same objects in every call's exec
    _emit("lines", "", sorted(_code_lines(fn_code, fn_code.co_firstlineno)))
    for args, kwargs in calls:
        _emit(*_run(code, name, ours, args, kwargs, timeout, limit))


if __name__ == "__main__":
    main()
