"""Feast point-in-time retrieval through the file offline store (default) and the contrib Ray offline store
(Feast 0.67, behind `features.offline_store: {type: ray}`): every event row is either joined or quarantined."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from mixrec.features import feast_repo
from mixrec.features.schema import SYNTHETIC_SCHEMA as SCHEMA
from mixrec.features.synthetic import generate, write_sources
from mixrec.pipelines.ingest import retrieve_to_shards

pytestmark = pytest.mark.integration


def _retrieve(root, offline_store, tables):
    """The pipeline's retrieval (chunks in Ray tasks) -> (joined rows, rows dropped and quarantined)."""
    sources = write_sources(tables, root / "sources")
    feast_repo.write_repo_config(root / "feast", "offline", str(root / "feast/registry.db"),
                                 {"type": "sqlite", "path": str(root / "feast/online.db")}, offline_store)
    store = feast_repo.open_store(root / "feast")
    feast_repo.apply(store, feast_repo.build_definitions(SCHEMA, sources, ttl_days=30))
    counts = retrieve_to_shards(root / "feast", sources["events"], SCHEMA, root / "retrieved",
                                root / "quarantine.parquet", chunk_rows=1500)
    assert counts.events == len(tables.events) and counts.shards > 1  # several chunks, one task each
    return pq.read_table(root / "retrieved"), counts.dropped


def test_ray_offline_store_matches_file_store_and_loses_no_row(ray_session, tmp_path):
    tables = generate(num_events=4000, num_users=150, num_items=80, days=3, seed=21)
    file_rows, file_dropped = _retrieve(tmp_path / "file", {"type": "file"}, tables)
    ray_rows, ray_dropped = _retrieve(tmp_path / "ray", {"type": "ray", "storage_path": str(tmp_path / "rs")}, tables)
    assert file_rows.num_rows + file_dropped == len(tables.events) == ray_rows.num_rows + ray_dropped
    if ray_dropped:  # quarantined with the reason, never silently lost
        assert len(pq.read_table(tmp_path / "ray" / "quarantine.parquet")) == ray_dropped
    features = [f.name for f in SCHEMA.fields if f.source in ("user", "item")]
    a = file_rows.to_pandas().set_index("event_id")[features]
    b = ray_rows.to_pandas().set_index("event_id")[features]
    common = b.index.intersection(a.index)
    assert len(common) == ray_rows.num_rows
    assert (a.loc[common].sort_index().to_numpy() == b.loc[common].sort_index().to_numpy()).all()


def test_point_in_time_join_takes_the_value_as_of_each_event(ray_session, tmp_path):
    tables = generate(num_events=2000, num_users=50, num_items=30, days=4, seed=5)
    rows, dropped = _retrieve(tmp_path / "pit", {"type": "file"}, tables)
    assert dropped == 0
    joined = rows.to_pandas()
    day = (joined["event_timestamp"] - joined["event_timestamp"].min().normalize()).dt.days
    snapshots = tables.users.assign(day=(tables.users["event_timestamp"] - tables.users["event_timestamp"].min()).dt.days)
    expected = joined.assign(day=day).merge(snapshots[["user_id", "day", "activity"]], on=["user_id", "day"],
                                            suffixes=("", "_asof"))
    assert len(expected) == len(joined)
    assert (expected["activity"] == expected["activity_asof"]).all()  # never a later (future) snapshot


def test_a_failed_chunk_leaves_no_retrieval_behind(ray_session, tmp_path):
    tables = generate(num_events=3000, num_users=50, num_items=30, days=3, seed=8)
    sources = write_sources(tables, tmp_path / "sources")
    missing_repo = tmp_path / "no_feast_repo"  # every chunk's task fails to open the store
    with pytest.raises(Exception, match="feature_store.yaml"):
        retrieve_to_shards(missing_repo, sources["events"], SCHEMA, tmp_path / "retrieved",
                           tmp_path / "quarantine.parquet", chunk_rows=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sources"]  # no shards, no temporary folder, no quarantine
