"""The Feast feature repo for a dataset schema: entities, feature views, the ranker's FeatureService.

Embedded default: local provider, file offline store (the Parquet sources), sqlite online store and a
registry file in the workspace. Team mode passes another ``online_store``/``registry`` block (Redis,
PostgreSQL) through the config; the code path is the same.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from .schema import DatasetSchema

os.environ.setdefault("FEAST_USAGE", "False")

FEATURE_SERVICE = "ranker_features"
_FEAST_DTYPES = {"categorical": "Int64", "dense": "Float32"}


def write_repo_config(repo_dir: Path, project: str, registry: str | dict[str, Any],
                      online_store: dict[str, Any], offline_store: dict[str, Any] | None = None) -> Path:
    """Write ``feature_store.yaml``; the registry and online store blocks are Feast's own syntax."""
    repo_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "project": project,
        "provider": "local",
        "registry": registry,
        "offline_store": offline_store or {"type": "file"},
        "online_store": online_store,
        "entity_key_serialization_version": 3,
    }
    path = repo_dir / "feature_store.yaml"
    tmp = path.with_name(".feature_store.yaml.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)
    return path


def open_store(repo_dir: Path):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo_dir))


def _feature_view(name: str, entity, fields, source_path: Path, ttl: timedelta):
    from feast import FeatureView, Field, FileSource
    from feast.types import Float32, Int64

    dtypes = {"Int64": Int64, "Float32": Float32}
    source = FileSource(name=f"{name}_source", path=str(source_path), timestamp_field="event_timestamp",
                        created_timestamp_column="created")
    return FeatureView(name=name, entities=[entity], ttl=ttl, source=source, online=True,
                       schema=[Field(name=f.name, dtype=dtypes[_FEAST_DTYPES[f.kind]]) for f in fields])


def build_definitions(schema: DatasetSchema, sources: dict[str, Path], ttl_days: int) -> list:
    """Entities ``user`` and ``item``, a feature view for each, and the ranker's FeatureService."""
    from feast import Entity, FeatureService, ValueType

    ttl = timedelta(days=ttl_days)
    user = Entity(name="user", join_keys=[schema.user_key], value_type=ValueType.INT64)
    item = Entity(name="item", join_keys=[schema.item_key], value_type=ValueType.INT64)
    user_fv = _feature_view("user_features", user, schema.from_source("user"), sources["users"], ttl)
    item_fv = _feature_view("item_features", item, schema.from_source("item"), sources["items"], ttl)
    service = FeatureService(name=FEATURE_SERVICE, features=[user_fv, item_fv])
    return [user, item, user_fv, item_fv, service]


def apply(store, definitions: list) -> None:
    store.apply(definitions)


def historical_features(store, entity_df: pd.DataFrame) -> pa.Table:
    """Point-in-time join of the FeatureService's features onto labelled event rows.

    Feast drops an event row whose entity has no feature row inside the TTL window; callers compare row
    counts (see pipelines.ingest) and quarantine what is missing instead of losing it silently.
    """
    job = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(FEATURE_SERVICE))
    return job.to_arrow()


def materialize(store, start: datetime, end: datetime, marker: Path | None = None) -> None:
    """Load the latest feature values in ``[start, end]`` into the online store, then (re)write ``marker``
    (JSON: when and what window) so that serving replicas caching these features know to reload them."""
    store.materialize(start_date=start, end_date=end)
    if marker is not None:
        write_materialized_marker(marker, {"start": start.isoformat(), "end": end.isoformat()})


def write_materialized_marker(marker: Path, details: dict | None = None) -> None:
    """Tell serving replicas that the online store changed (they reload cached features when this file does).
    Whoever writes the online store outside ``materialize`` (a push, a backfill) calls this too."""
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(json.dumps({"materialized_at": time.time(), **(details or {})}))
    tmp.replace(marker)


def online_features(store, schema: DatasetSchema, source: str, keys: list[int]) -> dict[str, list]:
    """Latest feature values for entity ``keys`` (``source`` is ``user`` or ``item``); None where unknown."""
    key = schema.user_key if source == "user" else schema.item_key
    view = "user_features" if source == "user" else "item_features"
    refs = [f"{view}:{f.name}" for f in schema.from_source(source)]
    return store.get_online_features(features=refs, entity_rows=[{key: int(k)} for k in keys]).to_dict()
