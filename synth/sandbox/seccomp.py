"""The sandbox's system-call filter: an allow-list modelled on Docker's default seccomp profile.

`filter_bpf()` compiles the filter once, with libseccomp (`libseccomp.so.2`, the Debian package
`libseccomp2`, through ctypes: no Python binding needed), to classic BPF for this machine's
architecture. bubblewrap loads it with `--seccomp FD` just before it execs the command; a fork
server's run loads the same bytes itself (`prctl(PR_SET_SECCOMP)`) before the code's first line.

Every system call not in `ALLOWED` fails with EPERM, as in Docker's profile. Beyond what Docker
already leaves out without capabilities, these are denied outright: io_uring (its own way around
every other rule), the key syscalls (keyctl, add_key, request_key), ptrace, process_vm_readv /
writev, pidfd_getfd, kcmp, perf_event_open, bpf, userfaultfd, mount and the new mount API, and
the namespace syscalls (unshare, setns; clone only without CLONE_NEW* flags). clone3 answers
ENOSYS, as in Docker, because a filter cannot read its flags: the C library then falls back to
clone. System calls of another architecture (32-bit ones on x86-64) kill the process.
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache

ALLOWED = frozenset("""
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod chown
clock_getres clock_gettime clock_nanosleep close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat
exit exit_group faccessat faccessat2 fadvise64 fallocate fchdir fchmod fchmodat fchmodat2 fchown fchownat
fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex
futex_requeue futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid geteuid
getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
getresuid getrlimit get_robust_list getrusage getsid getsockname getsockopt gettid gettimeofday getuid
getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
io_getevents io_pgetevents ioprio_get ioprio_set io_setup io_submit kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lgetxattr link linkat listen listxattr llistxattr
lremovexattr lseek lsetxattr lstat madvise map_shadow_stack membarrier memfd_create mincore mkdir mkdirat
mknod mknodat mlock mlock2 mlockall mmap mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedsend mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep
newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages removexattr
rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_getaffinity
sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
select semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto setfsgid setfsuid setgid setgroups
setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit set_robust_list setsid
setsockopt set_tid_address setuid setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd
signalfd4 socket socketpair splice stat statfs statx symlink symlinkat sync sync_file_range syncfs sysinfo
tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create
timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat utime utimensat utimes
vfork vmsplice wait4 waitid write writev
""".split())  # fmt: skip
"""System calls allowed unconditionally: Docker's default list, less those `DENIED` names."""

DENIED = frozenset("""
io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key ptrace process_vm_readv
process_vm_writev pidfd_getfd kcmp perf_event_open bpf userfaultfd mount umount2 mount_setattr move_mount
open_tree fsopen fsconfig fsmount fspick pivot_root chroot unshare setns personality
""".split())  # fmt: skip
"""Named here so a test can check each is refused; anything not allowed is denied anyway."""

NAMESPACE_FLAGS = 0x7E020000
"""CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: clone with any is denied."""

_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_ERRNO = 0x00050000
_CMP_MASKED_EQ = 7
_FLTATR_ACT_BADARCH = 2
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


class SeccompUnavailable(OSError):
    """libseccomp is missing or failed to compile the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp.so.2 not found ({exc}); install the Debian package `libseccomp2`") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]  # fmt: skip
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def syscall_number(name: str) -> int | None:
    """This architecture's number of system call `name`, or None where it has none."""
    number = _library().seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None


@cache
def filter_bpf() -> bytes:
    """The filter as classic BPF (`struct sock_filter` entries), ready for bwrap or prctl."""
    lib = _library()
    ctx = lib.seccomp_init(_ERRNO | errno.EPERM)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS), "bad-arch action")
        for name in sorted(ALLOWED):
            _add(lib, ctx, _ACT_ALLOW, name)
        no_namespaces = (_ArgCmp * 1)(_ArgCmp(0, _CMP_MASKED_EQ, NAMESPACE_FLAGS, 0))
        _add(lib, ctx, _ACT_ALLOW, "clone", no_namespaces)
        _add(lib, ctx, _ERRNO | errno.ENOSYS, "clone3")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _add(lib: ctypes.CDLL, ctx: int, action: int, name: str, conditions=None) -> None:
    number = syscall_number(name)
    if number is None:  # not a system call of this architecture (an x86-only one on arm64, say)
        return
    _check(lib.seccomp_rule_add_array(ctx, action, number, len(conditions or ()), conditions), f"rule for {name}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf")
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "export")
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data
    finally:
        os.close(fd)


def _check(result: int, what: str) -> None:
    if result < 0:
        raise SeccompUnavailable(f"libseccomp: {what} failed: {os.strerror(-result)}")


def bpf_file(data: bytes) -> int:
    """An in-memory file holding `data` at its start, for bwrap's `--seccomp FD` (it reads to the end)."""
    fd = os.memfd_create("seccomp-bpf")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
