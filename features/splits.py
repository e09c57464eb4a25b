"""Split policies: which split (train / valid / test) each event lands in.

* ``given``: the split of the file the row comes from;
* ``time``: timestamp quantiles over the whole dataset (a first pass reads only the timestamps);
* ``random``: a seeded hash of the event key, so a row's split does not depend on how the data is chunked.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from .dataset import SplitSpec


def time_cuts(timestamps: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Int64 timestamp quantiles: rows <= the first are train, <= the second valid, the rest test."""
    train_end, valid_end = np.quantile(timestamps, [1 - valid_fraction - test_fraction, 1 - test_fraction])
    return int(train_end), int(valid_end)


def time_split_cuts(timestamps: Iterable[np.ndarray], split: SplitSpec) -> tuple[int, int]:
    """The time policy's cuts from every event's int64 timestamp (8 bytes a row, given in parts)."""
    return time_cuts(np.concatenate(list(timestamps)), split.valid_fraction, split.test_fraction)


def split_by_time(timestamps: np.ndarray, cuts: tuple[int, int]) -> np.ndarray:
    return np.where(timestamps <= cuts[0], "train", np.where(timestamps <= cuts[1], "valid", "test"))


def split_at_random(row_ids: np.ndarray, seed: int, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """A seeded hash of the row id (int or string): the same row lands in the same split however the data is
    chunked."""
    if row_ids.dtype.kind in "iu":
        hashed = pd.util.hash_array(row_ids.astype(np.int64) ^ np.int64(seed))
    else:  # string event keys: hash the text, then mix in the seed
        hashed = pd.util.hash_array(pd.util.hash_array(row_ids.astype(object)) ^ np.uint64(seed))
    u = hashed.astype(np.float64) / 2.0**64
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + valid_fraction, "valid", "train"))


def assign_splits(split: SplitSpec, file_split: str, timestamps: np.ndarray, event_keys: np.ndarray,
                  cuts: tuple[int, int] | None) -> np.ndarray:
    """The split of each row of one batch: ``file_split`` names the row's file, ``cuts`` come from
    :func:`time_split_cuts` (time policy only)."""
    if split.policy == "given":
        return np.full(len(timestamps), file_split)
    if split.policy == "time":
        return split_by_time(timestamps, cuts)
    return split_at_random(event_keys, split.seed, split.valid_fraction, split.test_fraction)
