"""Connecting to Ray: an embedded local Ray by default, an existing cluster by address.

Starting Ray fails now and then on a loaded machine ("The current node timed out during
startup"); `init_ray` tries again a few times and then fails with one line that says so, never
with Ray's traceback.
"""

from __future__ import annotations

import logging
import os
import time

import ray

from synth.errors import SynthError
from synth.spec import RayOptions

log = logging.getLogger(__name__)

START_TRIES = 3
"""Tries to start (or join) Ray before giving up."""
RETRY_PAUSE_S = 2.0

DASHBOARD_ENV = "SYNTH_RAY_DASHBOARD"
"""Set to 0 to start the embedded Ray without its dashboard (tests do: it costs a second)."""


def init_ray(address: str | None = None, options: RayOptions | None = None) -> str:
    """Start or join Ray once per process; returns where it runs ("embedded" or the address).

    Precedence: the `address` argument (`--ray-address`), the spec's `ray.address`, `RAY_ADDRESS`.
    A session that is already up (tests share one) is reused as it is.
    """
    options = options or RayOptions()
    address = address or options.address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("ray://"):
        # Ray Client proxies the driver; Ray Data's Parquet writes from it fail (Ray 2.60).
        raise SynthError(
            f"Ray address {address}: Ray Client (ray://) is not supported; run synth on a node of the "
            "cluster (or a pod beside it) with the head's address, e.g. --ray-address head-host:6379"
        )
    if ray.is_initialized():
        return "existing session"
    # Workers must import the project's packages: on a cluster they come with the same install.
    if address:
        log.info("joining the Ray cluster at %s", address)
        _start(f"join the Ray cluster at {address}", lambda: ray.init(
            address=address, log_to_driver=True, logging_config=_worker_logging()))
        return address
    # The embedded Ray is private to this process: token auth only gets in the way.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray starts workers at nice 15; on a busy machine they then starve while the driver waits.
    # The embedded Ray's workers do this process's work, so they run at its priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # None: Ray starts its dashboard when `ray[default]` is installed, and goes on without it if not.
    dashboard = None if os.environ.get(DASHBOARD_ENV, "1") != "0" else False
    context = _start("start the embedded Ray", lambda: ray.init(
        num_cpus=options.num_cpus,
        object_store_memory=options.object_store_memory,
        include_dashboard=dashboard,
        log_to_driver=True,
        logging_config=_worker_logging(),
    ))
    url = getattr(context, "dashboard_url", None)
    if url:
        log.info("Ray dashboard: http://%s (tasks, actors, logs and CPU use of this run; "
                 "`ray summary tasks --address http://%s` prints the same)", url, url)
    return "embedded"


def _start(what: str, start) -> object:
    """`start()`, tried START_TRIES times; the last failure becomes one SynthError line."""
    for attempt in range(1, START_TRIES + 1):
        try:
            return _keeping_the_hosts_log_handlers(start)
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception for a start-up time-out
            if ray.is_initialized():
                ray.shutdown()
            reason = _first_line(exc)
            if attempt == START_TRIES:
                raise SynthError(
                    f"could not {what} after {START_TRIES} tries: {reason} "
                    "(a busy machine makes Ray's start-up time out; try again, or start Ray once with "
                    "`ray start --head` and pass --ray-address)"
                ) from exc
            log.warning("could not %s (try %d of %d): %s; trying again", what, attempt, START_TRIES, reason)
            time.sleep(RETRY_PAUSE_S * attempt)
    raise AssertionError("unreachable")


def _keeping_the_hosts_log_handlers(start) -> object:
    """`start()`; `ray.init` adds a handler to the driver's root logger (for `logging_config`, which
    is meant for the workers): where the host has handlers of its own (the CLI does), every driver
    line would print twice, so Ray's is taken off the root logger again."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return start()
    finally:
        if before:
            for handler in root.handlers[:]:
                if handler not in before:
                    root.removeHandler(handler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _worker_logging() -> ray.LoggingConfig:
    # INFO from stage workers is how long stages (Self-Instruct rounds, training) show progress.
    return ray.LoggingConfig(encoding="TEXT", log_level="INFO")
