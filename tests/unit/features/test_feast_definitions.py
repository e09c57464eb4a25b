"""The Feast repo's definitions file: what mixrec applies is rebuilt from it, by Feast's CLI or by mixrec."""

from __future__ import annotations

import pandas as pd

from mixrec.features import feast_repo
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema


def test_schema_round_trips_through_its_dict():
    assert DatasetSchema.from_dict(SYNTHETIC_SCHEMA.to_dict()) == SYNTHETIC_SCHEMA


def test_written_definitions_rebuild_the_same_objects(tmp_path):
    sources = {}
    for source, key in (("user", "user_id"), ("item", "item_id")):
        fields = {f.name: [1] for f in SYNTHETIC_SCHEMA.from_source(source)}
        path = tmp_path / f"{source}s.parquet"
        pd.DataFrame({key: [1], "event_timestamp": pd.to_datetime(["2026-01-01"]), **fields}).to_parquet(path)
        sources[source] = path
    events = {f.name: [1] for f in SYNTHETIC_SCHEMA.from_source("row")}
    pd.DataFrame({SYNTHETIC_SCHEMA.event_key: [1], SYNTHETIC_SCHEMA.timestamp: pd.to_datetime(["2026-01-01"]),
                  **events}).to_parquet(tmp_path / "events.parquet")
    sources["row"] = tmp_path / "events.parquet"
    repo = tmp_path / "feast"
    repo.mkdir()
    written = feast_repo.write_definitions(repo, SYNTHETIC_SCHEMA, sources, ttl_days=30)
    assert (repo / feast_repo.DEFINITIONS_MODULE).exists()
    direct = feast_repo.build_definitions(SYNTHETIC_SCHEMA, sources, ttl_days=30)
    assert [d.name for d in written] == [d.name for d in direct]
    assert [type(d) for d in written] == [type(d) for d in direct]
    assert [d.name for d in feast_repo.load_definitions(repo)] == [d.name for d in direct]
