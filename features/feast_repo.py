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

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from .io import write_json_atomic, write_text_atomic
from .schema import DatasetSchema

os.environ.setdefault("FEAST_USAGE", "False")

FEATURE_SERVICE = "ranker_features"


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
    return write_text_atomic(yaml.safe_dump(config, sort_keys=False), repo_dir / "feature_store.yaml")


def open_store(repo_dir: Path):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo_dir))


def _feast_type(arrow_type: pa.DataType, kind: str):
    from feast.types import Array, Float32, Int64, String

    if kind == "dense":
        return Float32
    if kind == "multi_hot":
        # The canonical list<string> column as is: Feast 0.67's file offline store (point-in-time join) and
        # sqlite online store (materialize, online read) both keep Array(String) values, empty lists and
        # nulls (tests/integration/test_dataset_example.py checks both paths).
        return Array(String)
    return String if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) else Int64


def _source_path(sources: dict[str, Path], source: str) -> Path:
    """The Parquet file of an entity source; the synthetic writer names them ``users``/``items``/``events``."""
    legacy = {"user": "users", "item": "items", "row": "events"}
    path = sources.get(source) or sources.get(legacy[source])
    if path is None:
        raise KeyError(f"no source file for the {source!r} features; got {sorted(sources)}")
    return Path(path)


def _feature_view(name: str, entity, fields, source_path: Path, timestamp: str, ttl: timedelta):
    import pyarrow.parquet as pq
    from feast import FeatureView, Field, FileSource

    arrow = pq.read_schema(source_path)
    created = "created" if "created" in arrow.names else None
    source = FileSource(name=f"{name}_source", path=str(source_path), timestamp_field=timestamp,
                        created_timestamp_column=created)
    return FeatureView(name=name, entities=[entity], ttl=ttl, source=source, online=True,
                       schema=[Field(name=f.name, dtype=_feast_type(arrow.field(f.name).type, f.kind)) for f in fields])


def view_name(source: str) -> str:
    return f"{source}_features"


def build_definitions(schema: DatasetSchema, sources: dict[str, Path], ttl_days: int) -> list:
    """One entity and one feature view per entity source of the schema (``user``, ``item``, ``row``: those
    holding features), and the ranker's FeatureService over all views. ``sources`` maps the entity source to
    its Parquet file. Entity files carry ``event_timestamp``; the row source carries the event timestamp."""
    from feast import Entity, FeatureService, ValueType

    ttl = timedelta(days=ttl_days)
    definitions, views = [], []
    for source in schema.entity_sources:
        key = schema.entity_key(source)
        if key is None:
            raise ValueError(f"schema {schema.name!r} has {source} features but no {source} key")
        value_type = ValueType.STRING if schema.key_is_string(key) else ValueType.INT64
        entity = Entity(name=source, join_keys=[key], value_type=value_type)
        timestamp = schema.timestamp if source == "row" else "event_timestamp"
        view = _feature_view(view_name(source), entity, schema.from_source(source), _source_path(sources, source),
                             timestamp, ttl)
        definitions += [entity, view]
        views.append(view)
    return [*definitions, FeatureService(name=FEATURE_SERVICE, features=views)]


def apply(store, definitions: list) -> None:
    store.apply(definitions)


DEFINITIONS_SPEC = "definitions.json"
DEFINITIONS_MODULE = "definitions.py"
_DEFINITIONS_SOURCE = '''"""The feature definitions of this mixrec workspace, for the plain `feast` CLI (`feast apply`, `feast plan`,
`feast ui`, `feast feature-views list`).

Written by mixrec on every run from definitions.json (the dataset schema, the source files, the TTL): change the
dataset schema, not this file. `feast apply` here registers exactly what mixrec registered, so it loses nothing.
"""

from pathlib import Path

from mixrec.features.feast_repo import load_definitions

globals().update({definition.name: definition for definition in load_definitions(Path(__file__).parent)})
'''


def write_definitions(repo_dir: Path, schema: DatasetSchema, sources: dict[str, Path], ttl_days: int) -> list:
    """Write the repo's definitions (``definitions.json`` + the ``definitions.py`` Feast's CLI imports) and
    return them, built by :func:`load_definitions`: mixrec and ``feast apply`` register the same objects."""
    spec = {"schema": schema.to_dict(), "sources": {name: str(Path(path).resolve()) for name, path in sources.items()},
            "ttl_days": ttl_days}
    write_json_atomic(spec, repo_dir / DEFINITIONS_SPEC)
    write_text_atomic(_DEFINITIONS_SOURCE, repo_dir / DEFINITIONS_MODULE)
    return load_definitions(repo_dir)


def load_definitions(repo_dir: Path) -> list:
    """The entities, feature views and FeatureService of the repo's ``definitions.json``."""
    spec = json.loads((Path(repo_dir) / DEFINITIONS_SPEC).read_text())
    return build_definitions(DatasetSchema.from_dict(spec["schema"]),
                             {name: Path(path) for name, path in spec["sources"].items()}, spec["ttl_days"])


def historical_features(store, entity_df: pd.DataFrame, schema: DatasetSchema) -> pa.Table:
    """Point-in-time join of the user and item views onto labelled event rows.

    Row features are already on the event rows and ride along in ``entity_df``: joining the row view (an
    exact-time match of each event with itself) would make Feast's file offline store read the whole events
    file for every chunk. Feast drops an event row whose entity has no feature row inside the TTL window;
    callers compare row counts (see pipelines.ingest.join_chunk) and quarantine what is missing instead of
    losing it silently.
    """
    refs = [f"{view_name(s)}:{f.name}" for s in schema.entity_sources if s != "row" for f in schema.from_source(s)]
    if not refs:  # row features only (Criteo): nothing to join
        return pa.Table.from_pandas(entity_df, preserve_index=False)
    return store.get_historical_features(entity_df=entity_df, features=refs).to_arrow()


# Offline stores whose point-in-time join keeps an event with no feature row inside the TTL (a left join, the
# features null) where the file store drops it: Feast 0.67's ibis-based DuckDB store and the contrib Ray store.
KEEPS_UNMATCHED_ROWS = ("duckdb", "ray")


def store_type(store) -> str:
    """The ``offline_store.type`` a FeatureStore was opened with."""
    return str(getattr(store.config.offline_store, "type", "file"))


def matched_every_view(table: pa.Table, schema: DatasetSchema) -> np.ndarray:
    """Per joined row: True when each joined (user, item) view gave it a feature row, i.e. not all of that
    view's features are null. (A feature row whose every feature is null reads as no feature row.)"""
    matched = np.ones(table.num_rows, dtype=bool)
    for source in schema.entity_sources:
        names = [f.name for f in schema.from_source(source)] if source != "row" else []
        if names:
            matched &= ~np.logical_and.reduce([table[n].is_null().to_numpy(zero_copy_only=False) for n in names])
    return matched


def materialize(store, start: datetime, end: datetime, sources: tuple[str, ...] = ("user", "item"),
                marker: Path | None = None) -> None:
    """Load the latest feature values in ``[start, end]`` of the given entity sources into the online store,
    then (re)write ``marker`` (JSON: when and what window) so that serving replicas caching these features know
    to reload them. Row-keyed features are not materialized: serving never looks up a past event by its id."""
    names = [view_name(s) for s in sources]
    if names:
        store.materialize(start_date=start, end_date=end, feature_views=names)
    if marker is not None:
        write_materialized_marker(marker, {"start": start.isoformat(), "end": end.isoformat()})


def write_materialized_marker(marker: Path, details: dict | None = None) -> None:
    """Tell serving replicas that the online store changed (they reload cached features when this file does).
    Whoever writes the online store outside ``materialize`` (a push, a backfill) calls this too."""
    write_text_atomic(json.dumps({"materialized_at": time.time(), **(details or {})}), marker)


def online_features(store, schema: DatasetSchema, source: str, keys) -> dict[str, list]:
    """Latest feature values for entity ``keys`` (``source`` is ``user`` or ``item``); None where unknown.
    Keys are coerced to the join key's type (:func:`mixrec.features.schema.coerce_keys`)."""
    key = schema.entity_key(source)
    refs = [f"{view_name(source)}:{f.name}" for f in schema.from_source(source)]
    values = schema.key_array(key, keys).tolist()  # Python ints / strs, as Feast's proto conversion wants
    return store.get_online_features(features=refs, entity_rows={key: values}).to_dict()
