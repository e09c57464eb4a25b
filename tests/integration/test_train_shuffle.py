"""Training rows are shuffled per epoch through Ray Data's local shuffle (``train.shuffle_buffer_batches``)."""

from __future__ import annotations

import numpy as np

from mixrec.pipelines.train import shuffle_options


def _epoch_order(ds, **options) -> np.ndarray:
    return np.concatenate([b["id"].numpy() for b in ds.iter_torch_batches(batch_size=64, prefetch_batches=2,
                                                                           **options)])


def test_each_epoch_has_a_new_order_and_loses_no_row(ray_session):
    ds = ray_session.data.range(4096, override_num_blocks=8).materialize()
    file_order = _epoch_order(ds, **shuffle_options(0, 64, seed=0, epoch=0, rank=0))
    first = _epoch_order(ds, **shuffle_options(8, 64, seed=0, epoch=0, rank=0))
    second = _epoch_order(ds, **shuffle_options(8, 64, seed=0, epoch=1, rank=0))
    assert np.array_equal(np.sort(file_order), np.arange(4096))
    assert np.array_equal(np.sort(first), np.sort(file_order)) and np.array_equal(np.sort(second), np.sort(file_order))
    assert not np.array_equal(first, file_order)
    assert not np.array_equal(first, second)
    assert shuffle_options(0, 64, seed=0, epoch=0, rank=0) == {}
    assert shuffle_options(8, 64, seed=1, epoch=2, rank=1) != shuffle_options(8, 64, seed=1, epoch=2, rank=0)
