"""What a user sees when a run fails: one line, never a Ray traceback.

An exception raised by a stage inside a Ray task comes back to the driver wrapped, often twice
(Ray Data's `UserCodeException` around Ray's `RayTaskError` around the stage's own exception).
`explain` digs out what the stage raised:

- a `SynthError` (bad input, an unreachable server) becomes a `SynthError` with the stage's name
  and the stage's own message: the CLI prints it and exits 2;
- anything else is a bug: its full traceback goes to a log file and a `BugError` says, in one
  line, what was raised and where that file is: the CLI exits 1.
"""

from __future__ import annotations

import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

from synth.errors import BugError, SynthError

LOG_DIR = "_logs"
"""Under the output folder: the tracebacks of failed runs."""


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it wraps, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = getattr(current, "cause", None) if _is_ray_wrapper(current) else None
        current = current or current_cause(chain[-1])
    return chain


def current_cause(exc: BaseException) -> BaseException | None:
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _is_ray_wrapper(exc: BaseException) -> bool:
    # RayTaskError keeps the task's own exception in `.cause`; no import of Ray needed to see it.
    return type(exc).__module__.startswith("ray.") and isinstance(getattr(exc, "cause", None), BaseException)


def user_error(exc: BaseException) -> SynthError | None:
    """The SynthError a stage raised, wherever it sits in the chain; None for a bug.

    The innermost one: Ray's wrapper of a task's SynthError is a SynthError too (its text the
    whole remote traceback)."""
    errors = [e for e in causes(exc) if isinstance(e, SynthError)]
    return errors[-1] if errors else None


def explain(exc: BaseException, stage: str, log_dir: Path | None) -> SynthError | BugError:
    """One line for a stage's failure: its input error as it is, or a bug with its traceback logged."""
    error = user_error(exc)
    if error is not None:
        # Its first line: Ray Data appends its retry advice to the message on later lines.
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        line = text if text.startswith(f"stage {stage!r}") else f"stage {stage!r}: {text}"
        try:
            return type(error)(line)
        except TypeError:  # a subclass with another constructor
            return SynthError(line)
    root = _root(exc)
    log = write_traceback(exc, log_dir, stage)
    return BugError(f"stage {stage!r} failed: {_one_line(root)} (a bug; the traceback is in {log})")


def bug(exc: BaseException, log_dir: Path | None, what: str = "synth") -> BugError:
    """A failure outside any stage, as one line naming the file that holds its traceback."""
    log = write_traceback(exc, log_dir, what)
    return BugError(f"{what} failed: {_one_line(_root(exc))} (a bug; the traceback is in {log})")


def _root(exc: BaseException) -> BaseException:
    # The innermost exception that is not one of Ray's wrappers is what the code raised.
    chain = causes(exc)
    inner = [e for e in chain if not type(e).__module__.startswith("ray.")]
    return inner[-1] if inner else chain[-1]


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def write_traceback(exc: BaseException, log_dir: Path | None, what: str) -> Path:
    """Write the whole traceback (Ray's remote one included) to a new file; returns its path."""
    text = "".join(traceback.format_exception(exc))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in what)
    try:
        if log_dir is None:
            raise OSError("no output folder")
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"error-{stamp}-{safe}.log"
        path.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix=f"synth-error-{stamp}-{safe}-", suffix=".log")
        with open(fd, "w") as f:
            f.write(text)
        path = Path(name)
    return path
