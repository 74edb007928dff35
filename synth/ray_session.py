"""Connecting to Ray: an embedded local Ray by default, an existing cluster by address."""

from __future__ import annotations

import logging
import os

import ray

from synth.errors import SynthError
from synth.spec import RayOptions

log = logging.getLogger(__name__)


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
        ray.init(address=address, log_to_driver=True, logging_config=_worker_logging())
        return address
    # The embedded Ray is private to this process: token auth only gets in the way.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=options.num_cpus,
        object_store_memory=options.object_store_memory,
        include_dashboard=False,
        log_to_driver=True,
        logging_config=_worker_logging(),
    )
    return "embedded"


def _worker_logging() -> ray.LoggingConfig:
    # INFO from stage workers is how long stages (Self-Instruct rounds, training) show progress.
    return ray.LoggingConfig(encoding="TEXT", log_level="INFO")
