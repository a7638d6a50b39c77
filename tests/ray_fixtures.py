"""One local Ray cluster for every Ray test of the session (tests marked ``ray``).

Starting Ray costs seconds and its processes memory, so the tests share one small cluster
(2 CPUs, no dashboard); a driver subprocess joins it through the address this yields.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of the session's local Ray cluster (``RAY_ADDRESS`` for subprocesses)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
