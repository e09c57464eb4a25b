"""The ranker's feature plumbing without Ray or Feast: the cached item table and the batch frame."""

import numpy as np
import pytest

from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
from mixrec.serving.features import ItemTable, request_frame, to_float


def table(ids, values) -> ItemTable:
    values = np.vstack([np.asarray(values, dtype=np.float64).reshape(len(ids), 4), np.full((1, 4), np.nan)])
    return ItemTable(ids=np.asarray(ids, dtype=np.int64), values=values, loaded_at=0.0, marker_stamp=None)


def test_lookup_returns_each_ids_row_and_nan_for_unknown_ids():
    t = table([3, 10, 2**40], [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    got = t.lookup(np.array([10, 4, 2**40, 3, 0, 2**62, 10]))
    np.testing.assert_array_equal(got[:, 0], [2, np.nan, 3, 1, np.nan, np.nan, 2])
    assert got.shape == (7, 4)


def test_lookup_in_an_empty_table_is_all_nan():
    got = table([], np.empty((0, 4))).lookup(np.array([1, 2]))
    assert got.shape == (2, 4) and np.isnan(got).all()


def test_feast_none_becomes_nan():
    np.testing.assert_array_equal(to_float([1, None, 2.5]), [1.0, np.nan, 2.5])


def test_request_frame_repeats_per_request_values_over_that_requests_candidates():
    users, lengths = np.array([7, 8]), np.array([2, 3])
    items = np.array([1, 2, 3, 4, 5])
    user_features = np.array([[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]])  # age_bucket, region, activity
    item_features = np.arange(20, dtype=np.float64).reshape(5, 4)  # category, brand, price, quality
    frame = request_frame(schema, users, lengths, items, [{"device": 1, "hour": 9}, {}], user_features, item_features)
    assert set(schema.model_columns) <= set(frame.columns) and len(frame) == 5
    assert frame["user_id"].tolist() == [7, 7, 8, 8, 8]
    assert frame["device"].tolist() == [1, 1, None, None, None]  # missing context: None, imputed as OOV
    assert frame["activity"].tolist() == [0.5, 0.5, 0.25, 0.25, 0.25]
    assert frame["price"].tolist() == [2.0, 6.0, 10.0, 14.0, 18.0]


@pytest.mark.parametrize("context", [{"device": 1}, {}])
def test_request_frame_has_one_row_per_candidate(context):
    frame = request_frame(schema, np.array([1]), np.array([3]), np.array([4, 5, 6]), [context],
                          np.zeros((1, 3)), np.zeros((3, 4)))
    assert len(frame) == 3 and frame["item_id"].tolist() == [4, 5, 6]


def test_lookup_keys_keep_ints_and_map_strings_to_ids_or_unknown():
    from mixrec.serving.features import lookup_keys

    ints = lookup_keys([3, 2**62])
    assert ints.dtype == np.int64 and ints.tolist() == [3, 2**62]
    keys = lookup_keys(["17", "9007199254740993", "abc", "-4", "1 ", "9223372036854775807", "9223372036854775808"])
    assert keys.tolist() == [17, 9007199254740993, -1, -1, -1, 2**63 - 1, -1]
