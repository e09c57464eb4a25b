"""The ranker's feature plumbing without Ray or Feast: the cached item table and the batch frame."""

import numpy as np
import pytest

from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
from mixrec.serving.features import FeatureStoreUnavailable, ItemTable, request_frame, to_float


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


def test_lookup_by_string_ids_the_way_the_ranker_coerces_them():
    from dataclasses import replace

    hex_schema = replace(schema, string_keys=("user_id", "item_id"))
    ids = np.unique(hex_schema.key_array("item_id", ["8dcb419a", "00000042", "17"]))
    t = ItemTable(ids=ids, values=np.vstack([np.arange(12.0).reshape(3, 4), np.full((1, 4), np.nan)]),
                  loaded_at=0.0, marker_stamp=None)
    sent = hex_schema.key_array("item_id", np.array(["00000042", 17, "ffff", "8dcb419a"], dtype=object))
    got = t.lookup(sent)  # an int 17 is the string id "17"; "ffff" is unknown
    row = {v: i for i, v in enumerate(ids.tolist())}
    np.testing.assert_array_equal(got[:, 0], [4.0 * row["00000042"], 4.0 * row["17"], np.nan, 4.0 * row["8dcb419a"]])


class Reader:
    """User features as a function of the id and a version (what the online store holds now); records reads."""

    def __init__(self):
        self.version, self.reads = 0, []

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        self.reads.append(keys.tolist())
        return np.array([[k * 10 + self.version, "a"] for k in keys.tolist()], dtype=object).reshape(len(keys), 2)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def user_cache(tmp_path, ttl_s=30.0, size=100):
    from mixrec.serving.features import CachedUserFeatures

    read, clock, marker = Reader(), Clock(), tmp_path / "materialized.json"
    marker.write_text("{}")
    return CachedUserFeatures(read, marker, ttl_s, size, clock=clock), read, clock, marker


def test_user_cache_reads_only_the_users_it_has_not_cached(tmp_path):
    cache, read, _, _ = user_cache(tmp_path)
    first = cache.lookup(np.array([3, 1]))
    assert first.tolist() == [[30, "a"], [10, "a"]]
    got = cache.lookup(np.array([1, 7, 3]))
    assert got.tolist() == [[10, "a"], [70, "a"], [30, "a"]] and got.shape == (3, 2)
    assert read.reads == [[3, 1], [7]]
    cache.lookup(np.array([7, 1, 3]))
    assert read.reads == [[3, 1], [7]] and cache.info() == {"users": 3, "hits": 5, "misses": 3}


def test_a_cached_user_is_read_again_once_older_than_the_ttl(tmp_path):
    cache, read, clock, _ = user_cache(tmp_path, ttl_s=30.0)
    cache.lookup(np.array([1]))
    read.version = 1  # the online store changed, without a new materialization marker
    clock.now += 29.9
    assert cache.lookup(np.array([1])).tolist() == [[10, "a"]]  # within the bound: the cached row
    clock.now += 0.1
    assert cache.lookup(np.array([1])).tolist() == [[11, "a"]] and read.reads == [[1], [1]]


def test_a_new_materialization_marker_drops_every_cached_user(tmp_path):
    import os

    cache, read, _, marker = user_cache(tmp_path)
    cache.lookup(np.array([1, 2]))
    read.version = 1
    stat = marker.stat()
    os.utime(marker, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the pipeline rewrote it
    assert cache.lookup(np.array([2, 1])).tolist() == [[21, "a"], [11, "a"]] and read.reads == [[1, 2], [2, 1]]


def test_the_user_cache_keeps_at_most_size_users_least_recently_used_dropped(tmp_path):
    cache, read, _, _ = user_cache(tmp_path, size=2)
    cache.lookup(np.array([1, 2]))
    cache.lookup(np.array([1]))  # 2 is now the least recently used
    cache.lookup(np.array([3]))
    assert list(cache.rows) == [1, 3]
    cache.lookup(np.array([1, 2]))
    assert read.reads[-1] == [2]


def test_ttl_zero_reads_every_lookup_and_a_failed_read_caches_nothing(tmp_path):
    cache, read, _, _ = user_cache(tmp_path, ttl_s=0.0)
    cache.lookup(np.array([1]))
    cache.lookup(np.array([1]))
    assert read.reads == [[1], [1]] and not cache.rows

    cache, read, _, _ = user_cache(tmp_path)

    def failing(keys):
        raise FeatureStoreUnavailable("down")

    cache.read = failing
    with pytest.raises(FeatureStoreUnavailable):
        cache.lookup(np.array([4]))
    assert not cache.rows
    cache.read = read
    assert cache.lookup(np.array([4])).tolist() == [[40, "a"]]
