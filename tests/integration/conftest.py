"""Integration fixtures shared across modules: the served A/B app (two tiny pipeline runs) is built once per
session, because the pipeline runs and the Serve deployment cost most of a minute on a 2-core host.

The app is deleted right after the last collected test that uses it, not at the session's end: its idle
controller, proxy and five replicas take about half a core of a 2-core host from every later test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mixrec.pipelines.registry import CHALLENGER, CHAMPION

# Helper modules of these tests (serving_traffic) import by name: --import-mode=importlib puts no test folder on
# sys.path.
sys.path.insert(0, str(Path(__file__).parent))


def tiny_config(workspace, model: str, port: int) -> dict:
    return {
        "workspace": str(workspace),
        "data": {"num_events": 4000, "num_users": 200, "num_items": 100, "days": 4, "seed": 11},
        "model": {"name": model},
        "train": {"num_workers": 2, "epochs": 1, "batch_size": 512},
        # 2 replicas per ranker: the replica-kill test needs a survivor to serve while Serve replaces the other.
        "serve": {"port": port, "arms": {CHAMPION: 0.5, CHALLENGER: 0.5}, "max_candidates": 50,
                  "ranker_replicas": 2},
    }


_LAST_SERVED_USER = pytest.StashKey[str]()
_STOP_SERVED = pytest.StashKey[object]()


def _uses_served(item) -> bool:
    return "served" in getattr(item, "fixturenames", ())


def _served_modules_first(items: list) -> None:
    """Runs the integration modules that use the shared app one after another, before the others (each module's
    own order kept): the app is up from the first of them to the last, so the other modules (pipeline runs,
    apps of their own) run without its idle replicas on the CPUs."""
    slots = [i for i, item in enumerate(items) if item.nodeid.startswith("tests/integration/")]
    ours = [items[i] for i in slots]
    served_modules = {item.path for item in ours if _uses_served(item)}
    ordered = sorted(ours, key=lambda item: item.path not in served_modules)  # stable: module and test order kept
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config, items):
    _served_modules_first(items)
    users = [item.nodeid for item in items if _uses_served(item)]
    if users:
        config.stash[_LAST_SERVED_USER] = users[-1]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield  # the item's own fixtures are torn down first (some restore the served app)
    if item.nodeid == item.config.stash.get(_LAST_SERVED_USER, None):
        stop = item.config.stash.get(_STOP_SERVED, None)
        if stop is not None:
            stop()
    return result


@pytest.fixture(scope="session")
def served(ray_session, tmp_path_factory, free_port, pytestconfig):
    """Two pipeline runs (v1 rankmixer -> champion, v2 dnn -> challenger), then the A/B app on a free port.

    Session-scoped and shared: a test that changes the deployment (weights, token) restores ``cfg`` before it
    ends (see tests/integration/test_serving_robustness.py)."""
    import httpx

    from mixrec.pipelines.config import parse_config
    from mixrec.pipelines.run import run_pipeline
    from mixrec.serving.server import start_serving, stop_serving

    workspace = tmp_path_factory.mktemp("ws")
    port = free_port()
    first = run_pipeline(parse_config(tiny_config(workspace, "rankmixer", port)), fresh=True, progress=lambda _: None)
    cfg = parse_config(tiny_config(workspace, "dnn", port))
    second = run_pipeline(cfg, progress=lambda _: None)
    url = start_serving(cfg)
    client = httpx.Client(base_url=url, timeout=60)
    stopped = []

    def stop():
        if not stopped:
            stopped.append(True)
            client.close()
            stop_serving(cfg)

    pytestconfig.stash[_STOP_SERVED] = stop
    yield {"first": first, "second": second, "url": url, "client": client, "cfg": cfg}
    stop()



@pytest.fixture(autouse=True)
def _served_registry(request):
    """A test of the served app reads the registry of the served workspace: MLflow's tracking URI is
    process-wide, and modules that ran since the app was built pointed it at their own stores."""
    if "served" not in request.fixturenames:
        return
    from mixrec.pipelines.registry import setup_tracking
    from mixrec.pipelines.workspace import Workspace

    cfg = request.getfixturevalue("served")["cfg"]
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, Workspace.resolve(cfg.workspace),
                   cfg.registry.lock_uri)


@pytest.fixture(scope="session")
def deployed_with(served):
    """A context manager: the shared app deployed again with ``serve`` settings changed (and ``env`` set, e.g.
    a token's variable) inside the block; the fixture's own config (and environment) is back after it,
    whatever happened."""
    import os
    from contextlib import contextmanager

    from mixrec.pipelines.config import parse_config
    from mixrec.serving.server import deploy

    @contextmanager
    def deployed(env: dict[str, str] | None = None, **serve_settings):
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        data = served["cfg"].to_dict()
        data["serve"].update(serve_settings)
        try:
            yield deploy(parse_config(data))[1]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            deploy(served["cfg"])

    return deployed
