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


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: torch sees no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def free_port():
    """A function returning a currently free loopback port."""
    return _free_port


@pytest.fixture(scope="session")
def ray_session():
    """One private local Ray for the whole run (starting one costs ~10 s). 6 logical CPUs on 2 cores so
    Serve replicas, Train workers and Ray Data tasks can coexist in one instance: the shared served app (1.2 CPUs)
    is up from the first module that uses it, and a Feast retrieval chunk (1 CPU) that runs Ray Data inside
    itself needs a further CPU free, or it waits forever."""
    from mixrec.pipelines.runtime import init_ray

    ray = init_ray(num_cpus=6)
    yield ray
    ray.shutdown()


def _tiny_training_data(ray, num_events: int, seed: int):
    """Tiny synthetic rows -> (preprocessor, {"train", "valid"} prepared Ray Datasets), for Train-level tests."""
    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.features.synthetic import generate
    from mixrec.pipelines.preprocess import fit_preprocessor

    t = generate(num_events=num_events, num_users=100, num_items=60, days=3, seed=seed)
    rows = t.events.merge(t.users.drop_duplicates("user_id"), on="user_id", suffixes=("", "_u")).merge(
        t.items, on="item_id", suffixes=("", "_i"))
    train_ds, valid_ds = ray.data.from_pandas(rows[list(schema.required_columns)]).split_proportionately([0.8])
    pre = fit_preprocessor(train_ds, schema, min_count=1, clip_sigma=5.0)
    return pre, {name: d.map_batches(pre.transform_batch, batch_format="pandas").materialize()
                 for name, d in (("train", train_ds), ("valid", valid_ds))}


@pytest.fixture(scope="session")
def tiny_training_data():
    """A function: (ray, num_events, seed) -> (preprocessor, {"train", "valid"} prepared Ray Datasets).
    Made once per (num_events, seed) and session: the datasets are materialized and only read by the tests."""
    made = {}

    def get(ray, num_events: int, seed: int):
        if (num_events, seed) not in made:
            made[num_events, seed] = _tiny_training_data(ray, num_events, seed)
        return made[num_events, seed]

    return get
