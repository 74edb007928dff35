"""Start sandbox processes from one thread that joins a fresh, empty session keyring before each.

A process inherits its parent's session keyring, and possessing a keyring grants its keys'
possessor permissions whatever the uid: a sandbox started by a process that has one (what runc,
container runtimes and PAM logins give it) could read the host's keys and leave keys for the
host and later runs. Linux keeps the session keyring per thread, so every sandbox is started
from a dedicated thread that first joins a new anonymous one (`KEYCTL_JOIN_SESSION_KEYRING`
with no name): the sandbox gets a keyring of its own, empty, and the host's threads keep
theirs. The seccomp filter (`synth.sandbox.seccomp`) denies the key system calls inside anyway.

Where the host itself may not call keyctl (a container whose own filter denies it), the thread
cannot join one; the sandbox then inherits the host's keyring, which the code, denied those
system calls by the same filter and ours, cannot use either. A warning says so once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from synth.sandbox.memory_cgroup import MemoryCgroup
from synth.sandbox.seccomp import syscall_number

log = logging.getLogger(__name__)

_KEYCTL_JOIN_SESSION_KEYRING = 1
_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_warned: list[bool] = []


def popen(command: list[str], cgroup: MemoryCgroup | None = None, **options) -> subprocess.Popen:
    """`subprocess.Popen(command, **options)`, started with a fresh anonymous session keyring,
    inside `cgroup` where given (the launcher thread enters it for the start: children are born in it)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="sandbox-launcher")
    return _pool.submit(_start, command, cgroup, options).result()


def join_new_session_keyring() -> bool:
    """Give the calling thread a new, empty, anonymous session keyring; False where keyctl is refused."""
    number = syscall_number("keyctl")
    return number is not None and _libc.syscall(number, _KEYCTL_JOIN_SESSION_KEYRING, None) >= 0


def _start(command: list[str], cgroup: MemoryCgroup | None, options: dict) -> subprocess.Popen:
    if not join_new_session_keyring() and not _warned:
        _warned.append(True)
        why = os.strerror(ctypes.get_errno())
        log.warning("cannot give sandboxes a session keyring of their own (keyctl: %s); the seccomp filter "
                    "still denies them the key system calls", why)  # fmt: skip
    if cgroup is None:
        return subprocess.Popen(command, **options)
    cgroup.enter_thread()
    try:
        return subprocess.Popen(command, **options)
    finally:
        cgroup.leave_thread()


def _forget_in_child() -> None:
    global _lock, _pool
    _lock, _pool = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_in_child)
