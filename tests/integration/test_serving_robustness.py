"""The served A/B app under traffic, through real HTTP, real Ray Serve and the real Feast online store:
live re-weighting, bearer token, item-feature cache refresh, backpressure, a ranker replica killed under
load, and `mixrec query --file`. Reuses the session's `served` app (tests/integration/
conftest.py); every test that changes the deployment puts the fixture's config back before it ends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_traffic import (  # tests/integration (on sys.path)
    CONTEXT,
    Traffic,
    replica_names,
    running_replicas,
)

from mixrec.pipelines.registry import CHALLENGER, CHAMPION

pytestmark = pytest.mark.integration

MIXREC = str(Path(sys.executable).with_name("mixrec"))


@pytest.fixture
def restore(served):
    """Put the fixture's deployment back (its whole config: weights, no token, limits) after a test that changed it."""
    from mixrec.serving.server import start_serving

    yield
    start_serving(served["cfg"])


def test_set_weights_live_under_traffic_drops_nothing(served, restore):
    from mixrec.serving.server import set_weights

    rankers_before = replica_names("ranker_champion_v1") | replica_names("ranker_challenger_v2")
    with Traffic(served["url"]) as traffic:
        traffic.wait_for(40)
        before = Counter(arm for _, arm in traffic.results)
        spec = set_weights(served["cfg"].workspace, {CHAMPION: 1.0, CHALLENGER: 0.0})
        start = traffic.mark()
        traffic.wait_for(start + 40)
    after = Counter(arm for _, arm in traffic.results[start:])
    assert traffic.failures() == []
    assert before[CHAMPION] > 0 and before[CHALLENGER] > 0, before
    assert after == Counter({CHAMPION: len(traffic.results) - start}), after
    assert spec.weights == {CHAMPION: 1.0, CHALLENGER: 0.0}
    assert served["client"].get("/arms").json()["weights"] == {CHALLENGER: 0.0, CHAMPION: 1.0}
    # Re-weighting reconfigured the splitter; the rankers' replicas kept running.
    assert replica_names("ranker_champion_v1") | replica_names("ranker_challenger_v2") == rankers_before


def test_bearer_token_from_the_environment_survives_set_weights(served, restore, monkeypatch):
    """The token, once served, is kept by `mixrec ab set-weights` run without it (or any config): set-weights
    changes the weights only. Bad weights leave the server as it was."""
    from mixrec.pipelines.config import ConfigError, parse_config
    from mixrec.serving.server import start_serving

    data = served["cfg"].to_dict()
    data["serve"]["auth_token_env"] = "MIXREC_TEST_SERVE_TOKEN"
    data["serve"]["salt"] = "another-salt"
    cfg = parse_config(data)
    monkeypatch.delenv("MIXREC_TEST_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="MIXREC_TEST_SERVE_TOKEN is unset"):
        start_serving(cfg)
    monkeypatch.setenv("MIXREC_TEST_SERVE_TOKEN", "s3cret-token")
    start_serving(cfg)
    monkeypatch.delenv("MIXREC_TEST_SERVE_TOKEN")
    workspace = str(served["first"].workspace.root)
    bads = (["champion=nan"], ["champion=1e308", "challenger=1e308"], ["champion=0", "challenger=0"],
            ["champion=-1"], ["champion=inf"], ["nobody=1"])
    # The six refusals are independent processes: run them at once (each is mostly interpreter start-up).
    procs = [subprocess.Popen([MIXREC, "ab", "set-weights", *bad, "--workspace", workspace], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for bad in bads]
    for bad, proc in zip(bads, procs, strict=True):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2 and len(stderr.strip().splitlines()) == 1, (bad, stderr)
    client, body = served["client"], {"user_id": 3, "items": [1, 2]}
    good = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/arms", headers=good).json()["weights"] == {CHAMPION: 0.5, CHALLENGER: 0.5}  # untouched
    assert client.post("/rank", json=body, headers=good).status_code == 200
    proc = subprocess.run([MIXREC, "ab", "set-weights", "champion=3", "challenger=1", "--workspace", workspace],
                          capture_output=True, text=True, timeout=300)  # the README's way: no --config, no token
    assert proc.returncode == 0, proc.stderr
    assert client.get("/arms", headers=good).json()["weights"] == {CHAMPION: 0.75, CHALLENGER: 0.25}
    state = json.loads(served["first"].workspace.serve_state.read_text())
    assert state["plan"]["serve"]["salt"] == "another-salt" and state["weights"] == {CHAMPION: 3.0, CHALLENGER: 1.0}
    missing = client.post("/rank", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/rank", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/arms").status_code == 401
    assert client.post("/rank", json=body, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/health").status_code == 200


def _score(client: httpx.Client, user: int, item: int) -> float:
    r = client.post("/rank", json={"user_id": user, "items": [item], "context": CONTEXT})
    assert r.status_code == 200, r.text
    return r.json()["ranked"][0]["score"]


def test_item_features_are_cached_and_reloaded_when_the_store_is_materialized(served):
    """A direct write to the online store is not seen (items come from the replica's table) until the
    materialization marker changes; then every replica serves the new values within the staleness bound."""
    import pandas as pd

    from mixrec.features import feast_repo

    ws, client = served["first"].workspace, served["client"]
    store = feast_repo.open_store(ws.feast_repo)
    user, item = 5, 7  # user 5 lands in one arm; both of its replicas must reload
    original = pd.DataFrame(store.get_online_features(
        features=["item_features:category", "item_features:brand", "item_features:price", "item_features:quality"],
        entity_rows=[{"item_id": item}]).to_dict())
    assert original["price"].notna().all(), original
    changed = original.assign(price=original["price"] * 50 + 500, quality=-original["quality"],
                              event_timestamp=pd.Timestamp.now(tz="UTC"), created=pd.Timestamp.now(tz="UTC"))
    baseline = _score(client, user, item)
    try:
        store.write_to_online_store("item_features", changed)
        time.sleep(2.5)  # > item_cache_check_s: without a new marker nothing reloads
        assert {_score(client, user, item) for _ in range(6)} == {baseline}
        feast_repo.write_materialized_marker(ws.materialized_marker)
        deadline = time.time() + 20
        while time.time() < deadline and any(_score(client, user, item) == baseline for _ in range(6)):
            time.sleep(0.3)
        assert all(_score(client, user, item) != baseline for _ in range(6))
    finally:
        store.write_to_online_store("item_features", original.assign(
            event_timestamp=pd.Timestamp.now(tz="UTC"), created=pd.Timestamp.now(tz="UTC")))
        feast_repo.write_materialized_marker(ws.materialized_marker)


def test_overload_is_answered_503_with_retry_after_and_nothing_hangs(served, restore):
    from mixrec.pipelines.config import parse_config
    from mixrec.serving.server import start_serving

    data = served["cfg"].to_dict()
    data["serve"].update(max_ongoing_requests=1, max_queued_requests=1, retry_after_s=2)
    start_serving(parse_config(data))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served["url"], timeout=60) as client:
            return await asyncio.gather(*(client.post("/rank", json={"user_id": u, "items": list(range(1, 51))})
                                          for u in range(120)))

    responses = asyncio.run(asyncio.wait_for(burst(), 90))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "2" and "overloaded" in r.text for r in rejected)


def test_killing_a_ranker_replica_under_load_fails_under_1_percent_and_recovers(served):
    import ray

    deployment = "ranker_champion_v1"
    names = replica_names(deployment)
    assert len(names) == 2 and running_replicas(deployment) == 2
    victim = sorted(names)[0]
    with Traffic(served["url"], concurrency=6) as traffic:
        traffic.wait_for(30)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        start = traffic.mark()

        def recovered() -> bool:
            now = replica_names(deployment)
            return len(now) == 2 and victim not in now and bool(now - names) and running_replicas(deployment) == 2

        deadline = time.time() + 120
        while time.time() < deadline and not recovered():
            time.sleep(0.5)
        traffic.wait_for(start + 30)
    assert recovered(), f"Serve did not replace the killed replica: {replica_names(deployment)}"
    failures = traffic.failures()
    assert len(failures) < 0.01 * len(traffic.results), (len(failures), len(traffic.results), failures[:3])


def test_query_file_batch_prints_one_json_line_per_request(served, tmp_path):
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text(json.dumps({"user_id": 1, "items": [1, 2, 3], "context": CONTEXT}) + "\n"
                     + json.dumps({"user_id": 2, "items": [4, 5]}) + "\n")
    csv = tmp_path / "requests.csv"
    csv.write_text('user_id,items,device,hour\n3,"6,7,8",1,20\n4,9 10,,\n5,"11",0,3\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": 1, "items": [1]}\n{oops\n')
    # Three independent processes, started at once (each is mostly interpreter start-up).
    procs = [subprocess.Popen([MIXREC, "query", "--file", str(path), "--url", served["url"]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for path in (jsonl, csv, bad)]
    (out_jsonl, out_csv, out_bad) = [(p, *p.communicate(timeout=120)) for p in procs]
    for (proc, stdout, stderr), users in ((out_jsonl, [1, 2]), (out_csv, [3, 4, 5])):
        assert proc.returncode == 0, stderr
        lines = [json.loads(line) for line in stdout.splitlines()]
        assert [line["line"] for line in lines] == list(range(1, len(users) + 1))
        assert [line["response"]["user_id"] for line in lines] == users and {line["status"] for line in lines} == {200}
    proc, _, stderr = out_bad
    assert proc.returncode == 2 and f"{bad}:2: not valid JSON" in stderr


def test_scores_do_not_depend_on_batching(served):
    """A request scored alone and inside a batch of concurrent requests gets the same scores."""
    client = served["client"]
    alone = client.post("/rank", json={"user_id": 11, "items": [3, 1, 4, 15], "context": CONTEXT}).json()

    async def together() -> list[dict]:
        async with httpx.AsyncClient(base_url=served["url"], timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/rank", json={"user_id": u, "items": [3, 1, 4, 15], "context": CONTEXT})
                                        for u in [11, *range(100, 115)]))
        return [r.json() for r in rs]

    batched = asyncio.run(together())[0]
    assert batched["arm"] == alone["arm"]
    np.testing.assert_allclose([i["score"] for i in batched["ranked"]], [i["score"] for i in alone["ranked"]],
                               rtol=1e-5)
