"""Feast definitions (no store, no Ray): join keys take the dataset's key type."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pyarrow as pa
from feast import ValueType

from mixrec.features.feast_repo import build_definitions, matched_every_view
from mixrec.features.schema import SYNTHETIC_SCHEMA
from mixrec.features.synthetic import generate, write_sources


def test_string_keys_are_string_entities_and_int_keys_stay_int64(tmp_path):
    sources = write_sources(generate(50, 5, 4, 2, 0), tmp_path)
    sources = {"user": sources["users"], "item": sources["items"]}
    entities = {d.name: d for d in build_definitions(SYNTHETIC_SCHEMA, sources, 7) if d.__class__.__name__ == "Entity"}
    assert {n: e.value_type for n, e in entities.items()} == {"user": ValueType.INT64, "item": ValueType.INT64}
    users = pd.read_parquet(sources["user"]).assign(user_id=lambda f: f["user_id"].map("{:08x}".format))
    users.to_parquet(sources["user"])
    hex_users = replace(SYNTHETIC_SCHEMA, string_keys=("user_id",))
    entities = {d.name: d for d in build_definitions(hex_users, sources, 7) if d.__class__.__name__ == "Entity"}
    assert entities["user"].value_type == ValueType.STRING and entities["item"].value_type == ValueType.INT64


def test_a_row_without_a_feature_row_of_some_view_is_unmatched():
    """DuckDB's left join leaves the features of an event without a feature row inside the TTL null."""
    user = [f.name for f in SYNTHETIC_SCHEMA.from_source("user")]
    item = [f.name for f in SYNTHETIC_SCHEMA.from_source("item")]
    columns = {"event_id": [1, 2, 3, 4]}
    columns |= {n: [1.0, None, 1.0, None] if k == 0 else [1.0, None, 1.0, 2.0] for k, n in enumerate(user)}
    columns |= {n: [1.0, 1.0, None, 1.0] for n in item}
    # row 2: no user row; row 3: no item row; row 4: a user row with one feature null is a feature row
    assert matched_every_view(pa.table(columns), SYNTHETIC_SCHEMA).tolist() == [True, False, False, True]
