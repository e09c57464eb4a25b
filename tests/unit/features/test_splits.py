"""Split policies (no Ray): given, time quantiles, seeded random hash independent of chunking."""

from __future__ import annotations

import numpy as np

from mixrec.features.dataset import SplitSpec
from mixrec.features.splits import assign_splits, split_at_random, split_by_time, time_cuts, time_split_cuts


def test_time_cuts_place_the_fractions_at_the_end():
    ts = np.arange(100, dtype=np.int64)
    cuts = time_cuts(ts, 0.1, 0.2)
    split = split_by_time(ts, cuts)
    assert cuts == (69, 79)
    assert (split[:70] == "train").all() and (split[70:80] == "valid").all() and (split[80:] == "test").all()


def test_time_split_cuts_read_in_parts_equal_the_whole():
    ts = np.random.default_rng(0).integers(0, 10**9, 1000)
    spec = SplitSpec(policy="time", valid_fraction=0.15, test_fraction=0.25)
    assert time_split_cuts(np.array_split(ts, 7), spec) == time_cuts(ts, 0.15, 0.25)


def test_random_split_is_seeded_and_independent_of_chunking():
    ids = np.arange(10_000)
    whole = split_at_random(ids, 7, 0.1, 0.2)
    parts = np.concatenate([split_at_random(part, 7, 0.1, 0.2) for part in np.array_split(ids, 3)])
    assert (whole == parts).all()
    assert not (whole == split_at_random(ids, 8, 0.1, 0.2)).all()
    shares = {name: (whole == name).mean() for name in ("train", "valid", "test")}
    assert abs(shares["valid"] - 0.1) < 0.02 and abs(shares["test"] - 0.2) < 0.02


def test_assign_splits_follows_the_policy():
    ts, keys = np.array([1, 5, 9]), np.array([10, 11, 12])
    assert assign_splits(SplitSpec(policy="given"), "valid", ts, keys, None).tolist() == ["valid"] * 3
    assert assign_splits(SplitSpec(policy="time"), "all", ts, keys, (4, 8)).tolist() == ["train", "valid", "test"]
    random = SplitSpec(policy="random", seed=3)
    assert (assign_splits(random, "all", ts, keys, None) == split_at_random(keys, 3, 0.1, 0.1)).all()


def test_random_split_of_string_keys_is_seeded_and_independent_of_chunking():
    keys = np.array([f"{i:08x}" for i in range(2000)], dtype=object)
    whole = split_at_random(keys, 7, 0.1, 0.2)
    parts = np.concatenate([split_at_random(keys[:700], 7, 0.1, 0.2), split_at_random(keys[700:], 7, 0.1, 0.2)])
    assert (whole == parts).all() and not (whole == split_at_random(keys, 8, 0.1, 0.2)).all()
    assert 0.15 < (whole == "test").mean() < 0.25
