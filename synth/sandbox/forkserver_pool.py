"""Fork servers kept for reuse within one process, so a stage's batches start zygotes once.

Starting a `ForkServer` costs ~40 ms (an interpreter per zygote, the probe run) and closing it
~10 ms: as much as running a few dozen functions. `shared_server` lends a server for some
settings and takes it back afterwards; one left unused for `KEEP_IDLE_S` is closed by a
background thread, and all are closed when the process exits (a killed process takes its
zygotes with it: their sandboxes run with --die-with-parent). A forked child forgets its
parent's servers rather than sharing their zygotes.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from synth.sandbox.forkserver import PRELOAD, ForkServer
from synth.sandbox.bwrap import Sandbox

KEEP_IDLE_S = 30.0

_lock = threading.Lock()
_idle: dict[tuple, list[tuple[ForkServer, float]]] = {}  # settings -> (server, when it came back)
_reaper: threading.Thread | None = None


@contextmanager
def shared_server(sandbox: Sandbox, size: int = 1, env: dict[str, str] | None = None,
                  preload: tuple[str, ...] = PRELOAD, trusted: tuple[str, ...] = ()) -> Iterator[ForkServer]:  # fmt: skip
    """An idle server with these settings, or a new one; back to the idle ones afterwards.

    A caller has the server to itself until it gives it back. One whose use ended in an
    exception is closed, not kept."""
    key = (sandbox.limits.model_dump_json(), sandbox.python, size, tuple(sorted((env or {}).items())), tuple(preload),
           tuple(trusted))  # fmt: skip
    with _lock:
        idle = _idle.get(key)
        server = idle.pop()[0] if idle else None
    if server is None:
        server = ForkServer(sandbox, size, env, preload, trusted)
    try:
        yield server
    except BaseException:
        server.close()
        raise
    with _lock:
        _idle.setdefault(key, []).append((server, time.monotonic()))
    _start_reaper()


def close_idle(older_than_s: float = 0.0) -> int:
    """Close the idle servers unused for `older_than_s` seconds; returns how many."""
    cutoff = time.monotonic() - older_than_s
    with _lock:
        expired = [server for servers in _idle.values() for server, since in servers if since <= cutoff]
        for key in list(_idle):
            _idle[key] = [(server, since) for server, since in _idle[key] if since > cutoff]
            if not _idle[key]:
                del _idle[key]
    for server in expired:
        server.close()
    return len(expired)


def _start_reaper() -> None:
    global _reaper
    with _lock:
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(target=_reap, name="forkserver-reaper", daemon=True)
            _reaper.start()


def _reap() -> None:
    global _reaper
    while True:
        time.sleep(KEEP_IDLE_S / 3)
        close_idle(KEEP_IDLE_S)
        with _lock:
            if not _idle:  # nothing left to watch; the next server given back starts a reaper again
                _reaper = None
                return


def _forget_in_child() -> None:
    global _lock, _reaper
    _lock, _reaper = threading.Lock(), None
    _idle.clear()


atexit.register(close_idle)
os.register_at_fork(after_in_child=_forget_in_child)
