"""Load and chaos on loopback, bounded, on the session's shared app (real HTTP, Ray Serve, Feast, MLflow):

* a fixed arrival rate (open loop, :mod:`mixrec.serving.loadgen`) with no failed request; the 60 s run with
  its p50/p99 is ``bench/serving_load.py`` (docs/benchmarks.md);
* one of the two splitter replicas killed under load: under 1 % of the requests fail and Serve replaces it;
* a version swap under load (the champion alias moved to another version and the app redeployed, then
  moved back): no request fails.

The ranker-replica kill and the overload 503s are in test_serving_robustness.py.
"""

from __future__ import annotations

import asyncio
import time

import mlflow
import pytest
from serving_traffic import (  # tests/integration (on sys.path)
    CONTEXT,
    Traffic,
    replica_names,
    running_replicas,
)

from mixrec.pipelines.registry import CHAMPION, move_alias, resolve_alias
from mixrec.serving.loadgen import fixed_rate

pytestmark = pytest.mark.integration


def test_a_fixed_arrival_rate_gets_no_errors(served):
    result = asyncio.run(fixed_rate(served["url"], rate=40, seconds=5,
                                    body=lambda i: {"user_id": i % 199, "items": list(range(1, 21)), "context": CONTEXT}))
    assert result.sent == 200 and result.failed == 0, result.summary() | {"errors": result.errors}
    assert result.percentile_ms(50) <= result.percentile_ms(99)


def test_killing_a_splitter_replica_under_load_fails_under_1_percent_and_recovers(served):
    import ray

    names = replica_names("Splitter")
    assert len(names) == 2 and running_replicas("Splitter") == 2, names
    victim = sorted(names)[0]
    with Traffic(served["url"], concurrency=4) as traffic:
        traffic.wait_for(50)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        start = traffic.mark()

        def recovered() -> bool:
            now = replica_names("Splitter")
            return len(now) == 2 and victim not in now and running_replicas("Splitter") == 2

        deadline = time.time() + 120
        while time.time() < deadline and not recovered():
            time.sleep(0.5)
        traffic.wait_for(start + 400, timeout=120)
    assert recovered(), f"Serve did not replace the killed splitter replica: {replica_names('Splitter')}"
    failures = traffic.failures()
    assert len(failures) < 0.01 * len(traffic.results), (len(failures), len(traffic.results), failures[:3])


def test_a_version_swap_under_load_fails_no_request(served):
    from mixrec.serving.server import deploy

    model, client = served["cfg"].registry.model_name, mlflow.MlflowClient()
    before = resolve_alias(model, CHAMPION)
    other = "2" if before == "1" else "1"
    seen = set()
    try:
        with Traffic(served["url"], concurrency=4) as traffic:
            traffic.wait_for(30)
            for version in (other, before):  # promote, redeploy; roll back, redeploy
                move_alias(client, model, CHAMPION, version, reason="test: version swap under load")
                _, plan = deploy(served["cfg"])
                assert plan.arms[CHAMPION] == version
                mark = traffic.mark()
                traffic.wait_for(mark + 30)
                seen.add(served["client"].get("/arms").json()["versions"][CHAMPION])
    finally:
        if resolve_alias(model, CHAMPION) != before:
            move_alias(client, model, CHAMPION, before, reason="test: restore")
            deploy(served["cfg"])
    assert seen == {other, before}
    assert traffic.failures() == [] and len(traffic.results) > 90
