"""The docs/datasets.md example, run as written: a never-seen dataset (CSV events + Parquet user/item
snapshots) through Feast, Ray Data, GX and preprocessing from its schema file alone. Checks point-in-time
correctness through the new adapters, online/offline parity and that every row is accounted for; its
multi-hot fields (a delimited string on the events, a list column in the user snapshots) go through Feast
and the preprocessing to a model trained for one epoch with Ray Train."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features import feast_repo
from mixrec.features.synthetic import generate
from mixrec.pipelines import run as pipeline_run
from mixrec.pipelines.checkpoint import load_checkpoint
from mixrec.pipelines.config import TrainConfig, parse_config
from mixrec.pipelines.prepare import prepare_data
from mixrec.pipelines.pyfunc import MixrecRanker
from mixrec.pipelines.run import evaluate_checkpoint
from mixrec.pipelines.train import train

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _docs_schema() -> str:
    text = (REPO / "docs" / "datasets.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if b.startswith("name: shop"))


def _shop_config(root: Path, workspace: Path, **extra) -> dict:
    return {"workspace": str(workspace), "data": {"schema": str(root / "shop.yaml"), "root": str(root)},
            "features": {"retrieval_chunk_rows": 2000},  # several chunks: streaming path
            "validate": {"batch_size": 1000}, "preprocess": {"min_count": 1}, **extra}


@pytest.fixture(scope="module")
def shop(ray_session, tmp_path_factory, free_port):
    """The example's files from the synthetic generator (daily user snapshots), then one whole pipeline run from
    the schema file. The data-step tests check what its data steps (:func:`prepare_data`, recorded as the run
    called it) handed to training; the last test serves the version it registered."""
    root = tmp_path_factory.mktemp("shop")
    t = generate(num_events=3000, num_users=80, num_items=40, days=4, seed=11)
    (root / "shop").mkdir()
    rng = np.random.default_rng(5)
    t.events["recent_items"] = ["|".join(map(str, v)) for v in _random_lists(rng, len(t.events), 8, 40)]
    t.users["favourite_categories"] = [list(v) for v in _random_lists(rng, len(t.users), 4, 30)]
    t.events.rename(columns={"event_timestamp": "event_time", "label": "clicked"}).drop(columns="hour").to_csv(
        root / "shop" / "events.csv", index=False)
    t.users.rename(columns={"event_timestamp": "snapshot_time"})[
        ["user_id", "snapshot_time", "region", "activity", "favourite_categories"]].to_parquet(root / "shop" / "users.parquet")
    t.items.rename(columns={"event_timestamp": "snapshot_time"})[["item_id", "snapshot_time", "category", "price"]] \
        .to_parquet(root / "shop" / "items.parquet")
    # Two events of a user unknown to the snapshots: Feast joins nulls (or drops them); either way they must
    # end up quarantined with the reason, never in a split.
    extra = pd.read_csv(root / "shop" / "events.csv").tail(2).assign(user_id=999, event_id=[10_000, 10_001])
    extra.to_csv(root / "shop" / "events.csv", mode="a", header=False, index=False)
    (root / "shop.yaml").write_text(_docs_schema())
    cfg = parse_config(_shop_config(root, root / "ws", model={"name": "dnn"},
                                    train={"num_workers": 1, "epochs": 1, "batch_size": 256},
                                    serve={"port": free_port(), "arms": {"champion": 1.0}, "app_name": "mixrec-shop",
                                           "route_prefix": "/shop"}))
    prepared = []

    def recorded_prepare_data(*args, **kwargs):  # the real data steps; their result kept for the tests
        prepared.append(prepare_data(*args, **kwargs))
        return prepared[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline_run, "prepare_data", recorded_prepare_data)
        result = pipeline_run.run_pipeline(cfg, fresh=True, progress=lambda _: None)
    (data,) = prepared
    return t, result.workspace, data, cfg, result


def _random_lists(rng, rows: int, longest: int, values: int) -> np.ndarray:
    """``rows`` lists (an object array) of 0 to ``longest - 1`` random ints below ``values``."""
    lengths = rng.integers(0, longest, rows)
    out = np.empty(rows, dtype=object)
    out[:] = np.split(rng.integers(0, values, lengths.sum()), np.cumsum(lengths)[:-1])
    return out


def test_counts_reconcile_and_dropped_rows_are_quarantined(shop):
    _, ws, data, *_ = shop
    c = data.counts
    assert c["events"] == 3002 == c["feast_dropped"] + c["validated"]
    assert c["validated"] == c["accepted"] + c["quarantined"]
    assert c["accepted"] == c["train_rows"] + c["valid_rows"] + c["test_rows"]
    quarantined = [pq.read_table(p).to_pandas() for p in (ws.quarantine_dir / "feast_dropped.parquet",
                                                           ws.quarantine_dir / "validation.parquet") if p.exists()]
    q = pd.concat(quarantined)[["event_id", "_failed_expectations"]]
    assert len(q) == c["feast_dropped"] + c["quarantined"] == 2
    assert sorted(q["event_id"]) == [10_000, 10_001]
    assert q["_failed_expectations"].str.contains("point_in_time|not_be_null\\(region\\)").all()
    report = json.loads((ws.artifacts_dir / "validation_report.json").read_text())
    assert report["success"] and report["retrieval"]["dropped"] == c["feast_dropped"]
    assert {r["split"] for r in report["dataset_level"]["aggregates"]} == {"train", "valid", "test"}
    assert "dataset level: passed" in data.validation_summary


def test_point_in_time_join_through_the_schema_path(shop):
    t, ws, *_ = shop
    assert len(list(ws.retrieved_dir.glob("part-*.parquet"))) == 2  # 3002 rows in chunks of 2000
    joined = pd.read_parquet(ws.retrieved_dir)
    unknown = joined["user_id"] == 999
    assert joined.loc[unknown, "activity"].isna().all()  # no snapshot of that user: null, then quarantined
    joined = joined[~unknown]
    day = (joined["event_time"] - pd.Timestamp("2026-01-01", tz="UTC")).dt.days
    snaps = t.users.assign(day=(t.users["event_timestamp"] - t.users["event_timestamp"].min()).dt.days)
    expected = joined.assign(day=day).merge(snaps[["user_id", "day", "activity"]], on=["user_id", "day"],
                                            suffixes=("", "_asof"))
    assert len(expected) == len(joined) == 3000
    assert np.allclose(expected["activity"], expected["activity_asof"])  # the value as of the event, never later
    assert not np.allclose(snaps.groupby("user_id")["activity"].first(), snaps.groupby("user_id")["activity"].last())


def test_online_and_offline_features_agree(shop):
    t, ws, data, *_ = shop
    store = feast_repo.open_store(ws.feast_repo)
    users = [0, 1, 2, 5, 7]
    online = feast_repo.online_features(store, data.schema, "user", users)
    as_of = t.events["event_timestamp"].max()
    refs = [f"user_features:{f.name}" for f in data.schema.from_source("user")]
    offline = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": users, "event_timestamp": as_of}), features=refs).to_df()
    offline = offline.set_index("user_id").loc[users]
    for f in data.schema.from_source("user"):
        if f.kind == "multi_hot":  # Feast Array(String) both ways, empty lists kept
            assert [list(v) for v in offline[f.name]] == online[f.name], f.name
        else:
            assert np.allclose(np.asarray(online[f.name], dtype=float), offline[f.name].to_numpy(dtype=float)), f.name


def test_multi_hot_fields_through_feast_and_preprocessing(shop):
    t, ws, data, *_ = shop
    shard = pq.read_table(next(ws.retrieved_dir.glob("part-*.parquet")))
    assert shard.schema.field("recent_items").type == shard.schema.field("favourite_categories").type == \
        pa.list_(pa.string())
    joined = pd.read_parquet(ws.retrieved_dir).set_index("event_id")
    events = t.events.set_index("event_id")
    ids = events.index[:500]
    # an empty CSV cell is a missing value: null, not an empty list
    assert [None if v is None else list(v) for v in joined.loc[ids, "recent_items"]] == \
        [s.split("|") if s else None for s in events.loc[ids, "recent_items"]]
    # the user's list as of the event's day (point in time), as strings
    day = (events.loc[ids, "event_timestamp"] - events["event_timestamp"].min().normalize()).dt.days
    snaps = t.users.assign(day=(t.users["event_timestamp"] - t.users["event_timestamp"].min()).dt.days)
    asof = snaps.set_index(["user_id", "day"])["favourite_categories"]
    expected = [[str(c) for c in asof.loc[(u, d)]] for u, d in zip(events.loc[ids, "user_id"], day, strict=True)]
    assert [list(v) for v in joined.loc[ids, "favourite_categories"]] == expected
    # online: the latest snapshot's list, an empty one included, None for an unknown user
    last = snaps[snaps["day"] == snaps["day"].max()].set_index("user_id")["favourite_categories"]
    users = [int(last.map(len).idxmin()), int(last.map(len).idxmax()), 999]
    online = feast_repo.online_features(feast_repo.open_store(ws.feast_repo), data.schema, "user", users)
    assert online["favourite_categories"] == [[], [str(c) for c in last[users[1]]], None]

    pre = data.preprocessor
    assert pre.categorical[-2:] == ["recent_items", "favourite_categories"] and pre.bag_sizes[-2:] == (5, 3)
    layout = pre.layout()
    batch = data.datasets["train"].take_batch(64)
    assert batch["categorical"].shape == (64, layout.n_id_columns) == (64, len(pre.categorical) - 2 + 8)
    # the holdout's raw rows: the last 5 recent items per row, padded with 0; lists and strings agree
    raw = pd.read_parquet(ws.holdout_path)
    cat = pre.transform(raw)["categorical"]
    start = pre.id_column("recent_items")
    index = {v: i + 1 for i, v in enumerate(pre.vocabularies["recent_items"])}
    lists = [[] if v is None else list(v) for v in raw["recent_items"]]  # an empty CSV cell is missing: None
    assert any(v is None for v in raw["recent_items"]) and max(map(len, lists)) > 5
    expected = [([index.get(v, 0) for v in row[-5:]] + [0] * 5)[:5] for row in lists]
    assert cat[:, start:start + 5].tolist() == expected
    as_strings = raw.assign(recent_items=[None if v is None else "|".join(v) for v in raw["recent_items"]])
    assert np.array_equal(pre.transform(as_strings)["categorical"], cat)


def test_one_epoch_on_multi_hot_fields_trains_reloads_and_scores_raw_rows(shop, tmp_path):
    _, ws, data, *_ = shop
    cfg = TrainConfig(num_workers=1, epochs=1, batch_size=256)
    outcome = train(data.datasets["train"], data.datasets["valid"], data.preprocessor, "dnn", {}, cfg, tmp_path,
                    run_name="multi-hot")
    assert 0.0 <= outcome.metrics["valid_auc"] <= 1.0 and outcome.metrics["valid_rows"] > 0
    model, pre, spec = load_checkpoint(outcome.checkpoint_dir)
    assert model.layout.bag_sizes == tuple(spec["layout"]["bag_sizes"]) == data.preprocessor.layout().bag_sizes
    assert 0.0 <= evaluate_checkpoint(outcome.checkpoint_dir, data.datasets["test"])["auc"] <= 1.0
    ranker = MixrecRanker.from_checkpoint(outcome.checkpoint_dir)  # the registered model's scorer, on raw rows
    raw = pd.read_parquet(ws.holdout_path)
    probs = ranker.score(raw)
    assert probs.shape == (len(raw),) and np.isfinite(probs).all()


def test_the_dataset_trains_registers_and_serves_over_http(shop):
    """The whole pipeline from the schema file (the module's run), then Ray Serve ranking with that schema: user
    and item features (a multi-hot list among them) from the Feast online store, the event-row fields as request
    context (a multi-hot one as its delimited string), through the registered model's preprocessing."""
    import httpx

    from mixrec.serving.server import start_serving, stop_serving

    t, _, _, cfg, result = shop
    url = start_serving(cfg)
    try:
        items = t.items["item_id"].unique()[:6].tolist() + [987_654]  # the last one is unknown to Feast
        user = int(t.users["user_id"].iloc[0])
        body = {"user_id": user, "items": items, "context": {"device": 1, "recent_items": "3|17|5"}}
        r = httpx.post(f"{url}/rank", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_version"] == result.version and out["user_id"] == user
        assert sorted(x["item_id"] for x in out["ranked"]) == sorted(items)
        scores = [x["score"] for x in out["ranked"]]
        assert scores == sorted(scores, reverse=True) and all(0.0 < x < 1.0 for x in scores)
        bad = httpx.post(f"{url}/rank", json={**body, "context": {"colour": 1}}, timeout=60)
        assert bad.status_code == 422 and "colour" in bad.text and "recent_items" in bad.text
    finally:
        stop_serving(cfg)
