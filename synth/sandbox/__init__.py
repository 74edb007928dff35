"""The sandbox: untrusted code runs here with no network, a read-only system and hard limits, or not at all.

- `bwrap`: one bubblewrap sandbox per command (`Sandbox`, `SandboxLimits`, `SandboxResult`);
- `forkserver` and `zygote`: the same sandbox per run, forked from a warm interpreter waiting in one
  (a stage starts its server in `setup()` and closes it in `teardown()`);
- `launcher`, `seccomp`, `memory_cgroup`: what every sandbox start uses: a fresh session keyring,
  the syscall allow-list, one memory limit for all of a run's processes.

Callers import the public names from here; the modules above say how each part works.
"""

from synth.sandbox.bwrap import (
    SANDBOX_ENV,
    SANDBOX_UID,
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    default_python,
    program_too_large,
)

__all__ = [
    "SANDBOX_ENV", "SANDBOX_UID", "Sandbox", "SandboxLimits", "SandboxResult", "SandboxUnavailable",
    "default_python", "program_too_large",
]
