"""The docs/datasets.md example, run as written: a never-seen dataset (CSV events + Parquet user/item
snapshots) through Feast, Ray Data, GX and preprocessing from its schema file alone. Checks point-in-time
correctness through the new adapters, online/offline parity and that every row is accounted for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mixrec.features import feast_repo
from mixrec.features.synthetic import generate
from mixrec.pipelines.config import parse_config
from mixrec.pipelines.pipeline import StepTimer, prepare_data
from mixrec.pipelines.workspace import Workspace

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _docs_schema() -> str:
    text = (REPO / "docs" / "datasets.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if b.startswith("name: shop"))


@pytest.fixture(scope="module")
def shop(ray_session, tmp_path_factory):
    """The example's files from the synthetic generator (daily user snapshots), then the pipeline's data steps."""
    root = tmp_path_factory.mktemp("shop")
    t = generate(num_events=3000, num_users=80, num_items=40, days=4, seed=11)
    (root / "shop").mkdir()
    t.events.rename(columns={"event_timestamp": "event_time", "label": "clicked"}).drop(columns="hour").to_csv(
        root / "shop" / "events.csv", index=False)
    t.users.rename(columns={"event_timestamp": "snapshot_time"})[["user_id", "snapshot_time", "region", "activity"]] \
        .to_parquet(root / "shop" / "users.parquet")
    t.items.rename(columns={"event_timestamp": "snapshot_time"})[["item_id", "snapshot_time", "category", "price"]] \
        .to_parquet(root / "shop" / "items.parquet")
    # Two events of a user unknown to the snapshots: Feast joins nulls (or drops them); either way they must
    # end up quarantined with the reason, never in a split.
    extra = pd.read_csv(root / "shop" / "events.csv").tail(2).assign(user_id=999, event_id=[10_000, 10_001])
    extra.to_csv(root / "shop" / "events.csv", mode="a", header=False, index=False)
    (root / "shop.yaml").write_text(_docs_schema())
    cfg = parse_config({"workspace": str(root / "ws"),
                        "data": {"schema": str(root / "shop.yaml"), "root": str(root)},
                        "features": {"retrieval_chunk_rows": 2000},  # several chunks: streaming path
                        "validate": {"batch_size": 1000}, "preprocess": {"min_count": 1}})
    ws = Workspace.resolve(cfg.workspace).create(fresh=True)
    data = prepare_data(cfg, ws, StepTimer(lambda _: None))
    return t, ws, data


def test_counts_reconcile_and_dropped_rows_are_quarantined(shop):
    _, ws, data = shop
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
    t, ws, _ = shop
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
    t, ws, data = shop
    store = feast_repo.open_store(ws.feast_repo)
    users = [0, 1, 2, 5, 7]
    online = feast_repo.online_features(store, data.schema, "user", users)
    as_of = t.events["event_timestamp"].max()
    refs = [f"user_features:{f.name}" for f in data.schema.from_source("user")]
    offline = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": users, "event_timestamp": as_of}), features=refs).to_df()
    offline = offline.set_index("user_id").loc[users]
    for f in data.schema.from_source("user"):
        assert np.allclose(np.asarray(online[f.name], dtype=float), offline[f.name].to_numpy(dtype=float)), f.name
