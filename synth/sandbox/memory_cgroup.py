"""One memory limit for all of a sandbox's processes and its shared memory: a memory cgroup each.

RLIMIT_AS bounds each process's address space, not a run: seven children, or memfds and the
`/tmp` tmpfs, add up past it. Where the host mounts the cgroup v1 `memory` controller and lets
us make cgroups under our own (root, or a delegated tree), each sandbox gets a cgroup of its
own whose limit covers everything charged to it: the memory of every process, shared memory
(memfd, tmpfs, SysV) and page cache they bring in, swap included where the kernel accounts it.
Past it the kernel's OOM killer ends a process of that sandbox alone.

Children must be born inside it, or what they allocated before a move stays charged outside.
Cgroup v1 places threads, not only processes: the launcher thread (`synth.sandbox.launcher`) enters the
cgroup, starts bwrap, which inherits it, and leaves again; the host's other threads stay out.

Where there is no such controller (cgroup v2 only, or no write access), `available()` is False,
a warning says so once, and the documented bound is the rlimits': at most `processes` x
(`memory_mb` + `open_files` x `file_mb` of memfds) + `tmpfs_mb`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from functools import cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")
_names = itertools.count()
_lock = threading.Lock()
_warned: list[bool] = []
log = logging.getLogger(__name__)


@cache
def _own_cgroup() -> Path | None:
    """This process's memory cgroup folder, where it can make cgroups; None where it cannot."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = ROOT / path.lstrip("/")
            probe = folder / f"synth-probe-{os.getpid()}"
            try:
                probe.mkdir()
                probe.rmdir()
            except OSError:
                return None
            _remove_stale(folder)
            return folder
    return None


def _remove_stale(folder: Path) -> None:
    """Cgroups left by a process that was killed before it could remove them (empty by now)."""
    for path in folder.glob("synth-sandbox-*-*"):
        owner = path.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                path.rmdir()
            except OSError:
                pass


def available() -> bool:
    return _own_cgroup() is not None


class MemoryCgroup:
    """A cgroup with a memory limit; `enter_thread`/`leave_thread` move the calling thread."""

    def __init__(self, limit_mb: int):
        parent = _own_cgroup()
        if parent is None:
            raise OSError("no writable cgroup v1 memory controller")
        with _lock:
            self.path = parent / f"synth-sandbox-{os.getpid()}-{next(_names)}"
        self.parent = parent
        self.path.mkdir()
        limit = str(limit_mb << 20)
        (self.path / "memory.limit_in_bytes").write_text(limit)
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():  # memory + swap: none of it may go to swap instead
            swap.write_text(limit)

    def enter_thread(self) -> None:
        (self.path / "tasks").write_text(str(threading.get_native_id()))

    def leave_thread(self) -> None:
        (self.parent / "tasks").write_text(str(threading.get_native_id()))

    def peak_bytes(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in this cgroup so far (0 on kernels before
        4.13, which do not count them)."""
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        """Once its processes are gone (a zombie not yet reaped still holds it: a few tries);
        charges still held (page cache) move to the parent."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
        log.warning("cgroup %s still busy; left for the host to remove", self.path)


def warn_if_unavailable() -> None:
    if not available() and not _warned:
        _warned.append(True)
        log.warning("no writable cgroup v1 memory controller: a sandbox's memory is bounded by its rlimits "
                    "alone (processes x (memory_mb + open_files x file_mb) + tmpfs_mb)")  # fmt: skip
