"""The program of a fork server's zygote: it runs INSIDE an outer bubblewrap sandbox (see
`synth.sandbox.forkserver`) and builds one fresh sandbox per request by forking itself.

`synth.sandbox.forkserver` passes this file's text to the sandboxed interpreter (`python -S -c`), with one
argument: `marshal.dumps(config).hex()`, config a dict of `limits` (the rlimits), `tmpfs_mb` and
`preload` (standard-library modules imported once, here, so that every sandbox starts with
them). It cannot import the project, which is not in the sandbox.

Protocol on fd 0, a SOCK_SEQPACKET unix socket to the parent. First the zygote says `ready` (or
exits, its reason on stderr). Request: `marshal.dumps((trusted, env))` with fds attached
(SCM_RIGHTS): the run's stdin, stdout and stderr, and, where `trusted` (the index of one of
`config["trusted"]`, programs compiled once at start) is None, a file holding the program. The
zygote never reads or writes them, so nothing of a run's program, input or output passes
through its memory (which every later run starts as a copy of). Replies: `started`, with a pidfd of the run's init attached,
through which the parent enforces the wall clock and the output cap; then `DONE` (the exit code
in bwrap's convention, 128 + N for a death by signal N) once every process of the run is gone.

At start the zygote enters a user namespace of its own (the sandbox uid, 65534, mapped to the
outer one), where it holds capabilities, and a PID namespace whose PID 1 is the forked process
that then serves requests (so it may make new PID namespaces under its own, run after run).
Per request it forks the sandbox's init, PID 1 of a new PID namespace (when it exits, the kernel
kills everything left in the namespace, daemons too), which, before any untrusted code runs:
1. enters new mount, network, IPC, UTS and cgroup namespaces, mounts a private /tmp tmpfs and a
   /proc of its own and sets the hostname;
2. enters a new user namespace of its own (65534 again), whose user-namespace limit it sets to
   0, so the code can create none; the run shares no user namespace, so no keyring or process
   count, with any other run;
3. forks the process that runs the code, which takes its stdin/stdout/stderr, closes every
   other fd, sets the rlimits, clears the capability bounding set and drops every capability,
   loads the seccomp filter (`config["seccomp"]`, the same one bwrap loads for a plain run) and
   runs the code as `python -c` would.
The init joins a fresh anonymous session keyring first (`config["keyctl"]`, the system call's
number), so no run sees another's keys or the host's.
The outer sandbox already gives the rest: a read-only system, no host files, no_new_privs, an
environment that started empty.
"""

import ctypes
import marshal
import os
import resource
import signal
import socket
import struct
import sys
import traceback
import warnings

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET, _CLONE_NEWCGROUP = 0x10000000, 0x20000000, 0x40000000, 0x02000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
_PR_CAPBSET_DROP, _SYS_CAPSET, _CAP_VERSION_3 = 24, 126, 0x20080522
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _KEYCTL_JOIN_SESSION_KEYRING = 22, 2, 1
_SANDBOX_ID = 65534
DONE = struct.Struct("<i")
READY, STARTED = b"ready", b"started"
MAX_REQUEST = 1 << 20
_SETUP_FAILED = 125
_libc = ctypes.CDLL(None, use_errno=True)
_PID_NAMESPACE = []  # an fd of the server's own PID namespace, once it serves


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, what + ": " + os.strerror(errno))


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------- inside the new sandbox


def _enter_user_namespace():
    """A new user namespace with the sandbox uid and gid mapped to the current ones."""
    outer_uid, outer_gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER), "unshare(user)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", "%d %d 1" % (_SANDBOX_ID, outer_uid))
    _write("/proc/self/gid_map", "%d %d 1" % (_SANDBOX_ID, outer_gid))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_filter(bpf):
    """The seccomp filter (classic BPF from synth.sandbox.seccomp) on this process and its children, for good."""
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.cast(program, ctypes.c_void_p))
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def _set_up_init(config):
    """As the new PID namespace's PID 1, with the zygote's capabilities: a session keyring of the
    run's own, the other namespaces, the mounts and hostname; then a user namespace of the run's
    own, where none can be made."""
    keyctl = config["keyctl"]
    if keyctl is not None:  # where the host may not call keyctl, neither may the code (see synth.sandbox.launcher)
        _libc.syscall(keyctl, _KEYCTL_JOIN_SESSION_KEYRING, None)
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS | _CLONE_NEWCGROUP
    _check(_libc.unshare(flags), "unshare(mount, net, ipc, uts, cgroup)")
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    tmpfs = ("size=%d,mode=1777" % (config["tmpfs_mb"] << 20)).encode()
    _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, tmpfs), "mount /tmp")
    _check(_libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None), "mount /proc")
    socket.sethostname("sandbox")
    _enter_user_namespace()
    _write("/proc/sys/user/max_user_namespaces", "0")


def _confine(config, stdin_fd, out_fd, err_fd):
    """The process that runs the code: its fds, rlimits, and no capabilities at all."""
    os.chdir("/tmp")
    _write("/proc/self/oom_score_adj", "1000")  # the memory cgroup's OOM killer takes the run, not the zygote
    for target, fd in enumerate((stdin_fd, out_fd, err_fd)):
        os.dup2(fd, target)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    for name, (soft, hard) in config["limits"].items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel has
    header, data = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0), (ctypes.c_uint32 * 6)()
    _check(_libc.syscall(_SYS_CAPSET, header, data), "capset")
    _load_filter(config["seccomp"])


def _run_code(program, env):
    """What `python -c` would do with `program` (source, compiled here under the run's limits, or
    a trusted program's code object), in this already running interpreter; returns the exit code."""
    os.environ.clear()
    os.environ.update(env, PWD=os.getcwd())  # bwrap's --chdir sets PWD too
    sys.argv = ["-c"]
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    try:
        if isinstance(program, str):  # an error or warning shows as `python -c` shows it
            program = compile(program, "<string>", "exec")
        exec(program, main.__dict__)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:  # printed as `python -c` would, without this file's frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass


def _init(config, program, env, stdin_fd, out_fd, err_fd, status_fd):
    """The run's init, PID 1 of its PID namespace. Never returns.

    The code runs as PID 2, not 1: a namespace's PID 1 ignores the signals it has no handler for,
    so the code's own `os.kill(os.getpid(), ...)` would do nothing. The init writes the code's
    wait status on `status_fd` and exits; the kernel then kills whatever is left in the namespace."""
    try:
        if isinstance(program, int):  # an untrusted program's file: its text only ever in this run
            program = _read_program(program)
        os.dup2(err_fd, 2)
        os.dup2(status_fd, 1)  # nothing of the protocol's socket or pipes stays open in here
        for fd in (0, status_fd, _PID_NAMESPACE[0]):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1: ignored when sent from inside
        _set_up_init(config)
        runner = os.fork()
        if runner == 0:
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _confine(config, stdin_fd, out_fd, err_fd)
            except BaseException as exc:
                _fail(exc)
            os._exit(_run_code(program, env) & 0xFF)
        for fd in (stdin_fd, out_fd, err_fd, 2):
            os.close(fd)
        _, status = os.waitpid(runner, 0)
        os.write(1, b"%d" % status)
        os._exit(0)
    except BaseException as exc:
        _fail(exc)


def _fail(exc):
    try:
        os.write(2, ("sandbox setup failed: %r\n" % (exc,)).encode())
    finally:
        os._exit(_SETUP_FAILED)


# ---------------------------------------------------------------- the zygote


_TRUSTED = []  # the trusted programs' code objects, by index


def _compile_trusted(sources):
    """The server's trusted programs (the case harness, say), compiled once here, so their runs
    skip ~1 ms of compiling; the source where one does not compile cleanly (the run shows the
    error or warning, as `python -c` would). Compiling here also builds the compiler's lazily
    made types (~2 ms) once, before any fork. Untrusted code is never compiled here, nor read:
    it comes in a file the run reads and compiles under its own limits."""
    for source in list(sources) + ["pass"]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a warning stays the run's to print, on its stderr
                _TRUSTED.append(compile(source, "<string>", "exec"))
        except BaseException:
            _TRUSTED.append(source)


def _read_program(fd):
    """An untrusted program's source, read (in the run, not the zygote) from its file."""
    data = _read_all(fd)
    os.close(fd)
    return data.decode("utf-8", "surrogateescape")


def _serve(config, control, trusted, env, stdin_fd, out_fd, err_fd, program_fd):
    """One run: fork its init, hand the parent a pidfd of it, report the exit when all is gone."""
    program = _TRUSTED[trusted] if program_fd is None else program_fd
    status_r, status_w = os.pipe()
    _check(_libc.unshare(_CLONE_NEWPID), "unshare(pid)")  # for the next child only
    try:
        init = os.fork()
        if init == 0:
            os.close(status_r)
            _init(config, program, env, stdin_fd, out_fd, err_fd, status_w)
    finally:  # later children in our own PID namespace again, so the next unshare may make one
        _check(_libc.setns(_PID_NAMESPACE[0], _CLONE_NEWPID), "setns(pid)")
    for fd in (stdin_fd, out_fd, err_fd, status_w) + (() if program_fd is None else (program_fd,)):
        os.close(fd)
    pidfd = os.pidfd_open(init)  # a zombie until we reap it below, so it is there
    try:
        socket.send_fds(control, [STARTED], [pidfd])
    finally:
        os.close(pidfd)
    status = _read_all(status_r)  # until the init and the code have exited
    os.close(status_r)
    _, init_status = os.waitpid(init, 0)
    control.send(DONE.pack(_returncode(status, init_status)))


def _read_all(fd):
    data = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def _returncode(status, init_status):
    """The code's exit from its wait status; SIGKILL where the init was killed first, the
    set-up's failure where the init exited before it reported."""
    if not status:
        return _bwrap_code(init_status) if os.WIFSIGNALED(init_status) else _SETUP_FAILED
    return _bwrap_code(int(status))


def _bwrap_code(wait_status):
    """An exit code in bwrap's convention: 128 + N for a death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _become_server():
    """Enter a user namespace (capabilities in it) and become PID 1 of a new PID namespace under
    it, as a forked child; this process only waits for that child, so bwrap's sandbox lives as
    long as the server does."""
    _enter_user_namespace()
    _check(_libc.unshare(_CLONE_NEWPID), "unshare(pid)")
    server = os.fork()
    if server == 0:
        _PID_NAMESPACE.append(os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC))
        return
    os.close(0)
    _, status = os.waitpid(server, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main():
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    for name in config["preload"]:
        __import__(name)
    _compile_trusted(config["trusted"])
    try:
        _become_server()
    except BaseException as exc:  # no sandboxes can be made here: the parent reads why
        _fail(exc)
    control = socket.socket(fileno=0)
    control.send(READY)
    while True:
        message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, 4)
        if not message:
            return
        trusted, env = marshal.loads(message)
        if len(fds) != (3 if trusted is not None else 4):
            raise SystemExit("expected stdin, stdout, stderr (and an untrusted program) with each request, got %d fds"
                             % len(fds))
        _serve(config, control, trusted, env, *fds, *([None] if trusted is not None else []))


if __name__ == "__main__":
    main()
