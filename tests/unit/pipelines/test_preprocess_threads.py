"""The preprocessor is used from a Serve replica's thread pool: its first calls may be concurrent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
from mixrec.pipelines.preprocess import DenseStats, Preprocessor


def _preprocessor() -> Preprocessor:
    cats = [f.name for f in schema.categorical]
    dense = [f.name for f in schema.dense]
    return Preprocessor(categorical=cats, dense=dense, label=schema.label,
                        vocabularies={c: list(np.arange(3000, dtype=np.float64)) for c in cats},
                        dense_stats={d: DenseStats(mean=0.0, std=1.0, log1p=False) for d in dense}, clip_sigma=5.0)


def test_first_concurrent_transforms_do_not_race_on_pandas_index_engines():
    """pandas builds an Index's hash engine lazily; 8 threads hitting a fresh preprocessor at once used to
    raise InvalidIndexError in some of them (330 of 2,400 calls in a measurement with bare Indexes)."""
    frame = pd.DataFrame({c: np.arange(50) for c in schema.model_columns})
    for _ in range(30):
        pre = _preprocessor()
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda p: p.transform(frame)["categorical"], [pre] * 8))
        assert all(np.array_equal(o, outs[0]) for o in outs)
        assert outs[0][:, 0].tolist() == list(range(1, 51))
