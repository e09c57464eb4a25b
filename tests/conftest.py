"""Shared fixtures: one local Ray instance per test session; a free loopback port for Serve."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """A function returning a currently free loopback port."""
    return _free_port


@pytest.fixture(scope="session")
def ray_session():
    """One private local Ray for the whole run (starting one costs ~10 s). 4 logical CPUs on 2 cores so
    Serve replicas, Train workers and Ray Data tasks can coexist in one instance."""
    from mixrec.pipelines.runtime import init_ray

    ray = init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    """README-command tests first: each starts its own Ray, so they run before the in-process instance."""
    items.sort(key=lambda item: 0 if "/e2e/" in str(item.path) else 1)
