"""Shared fixtures: one embedded Ray session for the whole test run (ray.init costs seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Data's progress bars only clutter test output.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Workers at the tests' priority (Ray's default nice 15 starves them on a busy machine), and no
# dashboard for the embedded Rays that `synth generate` subprocesses start (it costs seconds).
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("SYNTH_RAY_DASHBOARD", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False,
                 log_to_driver=True)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
