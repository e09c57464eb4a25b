"""String keys end to end: a dataset whose users and items are keyed by hex hashes and whose events by 20-digit
ids (wider than int64) goes from its schema file through Feast (STRING join keys), Ray Data + GX, the
preprocessing and Ray Train to a registered version, which serves over HTTP with string ids and scores the
same candidates in batch (`mixrec score`, from a CSV file) to the same probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mixrec.features.synthetic import generate

pytestmark = pytest.mark.integration

SCHEMA = """\
name: hexshop
format: csv
files: {all: hex/events.csv}
label: clicked
event_key: event_id
event_key_type: string
timestamp: event_time
entities:
  user: {key: user_id, key_type: string, file: hex/users.parquet, timestamp: snapshot_time}
  item: {key: item_id, key_type: string, file: hex/items.parquet, timestamp: snapshot_time}
categorical: [user_id, item_id, device, {name: region, source: user}, {name: category, source: item}]
dense: [{name: activity, source: user}, {name: price, source: item, log1p: true}]
split: {policy: random, seed: 1}
"""
FIRST_EVENT_ID = 11255030587488208480  # > 2**63: no int64 holds it


def hex_ids(ids: np.ndarray, multiplier: int) -> np.ndarray:
    """Distinct 8-digit hex hashes (leading zeros kept, some all-digit) of small ints."""
    return np.char.zfill(np.char.mod("%x", (ids.astype(np.uint64) * np.uint64(multiplier)) % np.uint64(2**32)), 8)


@pytest.fixture(scope="module")
def hexshop(ray_session, tmp_path_factory, free_port):
    """The files, one pipeline run (1 epoch) and the served champion."""
    from mixrec.pipelines.config import parse_config
    from mixrec.pipelines.run import run_pipeline
    from mixrec.serving.server import start_serving, stop_serving

    root = tmp_path_factory.mktemp("hexshop")
    (root / "hex").mkdir()
    t = generate(num_events=3000, num_users=80, num_items=40, days=4, seed=13)
    users, items = hex_ids(np.arange(80), 2654435761), hex_ids(np.arange(40), 2246822519)
    users[2], items[7] = "00c0ffee", "31415926"  # leading zeros; an id that looks like a number
    events = t.events.assign(event_id=[str(FIRST_EVENT_ID + i) for i in range(len(t.events))],
                             user_id=users[t.events["user_id"]], item_id=items[t.events["item_id"]])
    events.rename(columns={"event_timestamp": "event_time", "label": "clicked"}).to_csv(
        root / "hex" / "events.csv", index=False)
    t.users.assign(user_id=users[t.users["user_id"]]).rename(columns={"event_timestamp": "snapshot_time"})[
        ["user_id", "snapshot_time", "region", "activity"]].to_parquet(root / "hex" / "users.parquet")
    t.items.assign(item_id=items[t.items["item_id"]]).rename(columns={"event_timestamp": "snapshot_time"})[
        ["item_id", "snapshot_time", "category", "price"]].to_parquet(root / "hex" / "items.parquet")
    (root / "hexshop.yaml").write_text(SCHEMA)
    config = {"workspace": str(root / "ws"), "data": {"schema": str(root / "hexshop.yaml"), "root": str(root)},
              "preprocess": {"min_count": 1}, "model": {"name": "dnn"},
              "train": {"num_workers": 1, "epochs": 1, "batch_size": 256},
              "serve": {"port": free_port(), "arms": {"champion": 1.0}, "app_name": "mixrec-hex",
                        "route_prefix": "/hex"}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = parse_config(config)
    result = run_pipeline(cfg, fresh=True, progress=lambda _: None)
    url = start_serving(cfg)
    try:
        yield {"root": root, "cfg": cfg, "result": result, "url": url, "users": users, "items": items,
               "events": events}
    finally:
        stop_serving(cfg)


def test_string_keys_stay_text_through_sources_feast_and_the_registered_preprocessing(hexshop):
    from feast import ValueType

    from mixrec.features import feast_repo
    from mixrec.pipelines.config import dataset_schema
    from mixrec.pipelines.pyfunc import load_ranker

    result, cfg = hexshop["result"], hexshop["cfg"]
    ws = result.workspace
    events = pq.read_table(ws.sources_dir / "events.parquet", columns=["event_id", "user_id"])
    assert events.column("event_id").to_pylist()[:2] == [str(FIRST_EVENT_ID), str(FIRST_EVENT_ID + 1)]
    assert result.counts["events"] == 3000 == result.counts["accepted"]  # no row lost to a key type
    store = feast_repo.open_store(ws.feast_repo)
    assert store.get_entity("user").value_type == store.get_entity("item").value_type == ValueType.STRING
    online = feast_repo.online_features(store, dataset_schema(cfg), "user", ["00c0ffee", "nobody"])
    assert online["region"][0] is not None and online["region"][1] is None  # leading zeros kept
    vocabulary = load_ranker(cfg.registry.model_name, result.version).preprocessor.vocabularies["user_id"]
    assert set(vocabulary) <= set(hexshop["users"]) and len(vocabulary) > 40  # the raw hex keys


def _rank(url: str, body: dict) -> dict:
    import httpx

    r = httpx.post(f"{url}/rank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_served_over_http_with_string_ids_and_scored_in_batch_alike(hexshop, tmp_path):
    from mixrec.cli import app

    url, users, items = hexshop["url"], hexshop["users"], hexshop["items"]
    user, candidates = str(users[3]), [str(i) for i in items[:6]] + ["ffffffff"]  # the last: unknown item
    out = _rank(url, {"user_id": user, "items": candidates, "context": {"device": 2}})
    assert out["user_id"] == user and sorted(x["item_id"] for x in out["ranked"]) == sorted(candidates)
    served = {x["item_id"]: x["score"] for x in out["ranked"]}
    assert all(0.0 < s < 1.0 for s in served.values())
    # a known user's features are found: an unknown user gets other scores for the same items
    stranger = {x["item_id"]: x["score"] for x in _rank(url, {"user_id": "not-a-user", "items": candidates,
                                                                "context": {"device": 2}})["ranked"]}
    assert not np.allclose([served[i] for i in candidates], [stranger[i] for i in candidates])

    # batch: the same rows from a CSV file (an all-digit hex id must stay text there too), plus the stranger
    rows = pd.DataFrame({"user_id": [user] * len(candidates) + ["not-a-user"] * len(candidates),
                         "item_id": candidates * 2, "device": 2})
    rows.to_csv(tmp_path / "candidates.csv", index=False)
    config = hexshop["root"] / "config.yaml"
    result = CliRunner().invoke(app, ["score", str(tmp_path / "candidates.csv"), "-c", str(config),
                                      "-o", str(tmp_path / "scores")])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(tmp_path / "scores")
    assert len(scores) == len(rows) and scores["user_id"].tolist() == rows["user_id"].tolist()
    expected = [served[i] for i in candidates] + [stranger[i] for i in candidates]
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_ids_sent_as_the_other_type_are_coerced(hexshop):
    """An int sent to a string-keyed dataset is its decimal text; the response echoes what was sent."""
    url, users, items = hexshop["url"], hexshop["users"], hexshop["items"]
    digits = str(items[7])
    as_text = _rank(url, {"user_id": str(users[0]), "items": [digits, str(items[1])]})
    as_int = _rank(url, {"user_id": str(users[0]), "items": [int(digits)]})
    assert as_int["ranked"][0]["item_id"] == int(digits)
    text_score = next(x["score"] for x in as_text["ranked"] if x["item_id"] == digits)
    assert as_int["ranked"][0]["score"] == pytest.approx(text_score, rel=1e-5)
