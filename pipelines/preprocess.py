"""Preprocessing fitted on the training split and applied identically everywhere (train, valid, test, serving).

The fitted state is one versioned JSON artifact (:class:`Preprocessor`): categorical vocabularies with a
min-count (index 0 is the OOV bucket: rare, unseen or missing values; values are integers or strings, e.g.
Criteo's hashed ids), hashing into a fixed number of buckets for fields with more distinct train values than a
threshold (index 0: missing), and dense statistics (optional log1p,
standardization, clipping; missing values are imputed with the training mean). A multi-hot field has a
vocabulary (or hashing) over its *values* and becomes ``max_len`` id columns, padded with 0. It is saved next to the model
in MLflow and loaded by the ranker, so training-serving skew cannot happen by construction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mixrec.features.io import write_json_atomic
from mixrec.features.multihot import flat_values, place, series_value_lists
from mixrec.features.schema import DatasetSchema
from mixrec.models import FeatureLayout
from mixrec.models.batch import CATEGORICAL, DENSE, LABEL

ARTIFACT_VERSION = 1
ARTIFACT_NAME = "preprocessing.json"


@dataclass
class DenseStats:
    mean: float
    std: float
    log1p: bool


@dataclass
class BagSpec:
    """How a multi-hot field becomes id columns: ``max_len`` of them, values split at ``separator`` when given
    as one string, the ``first`` or ``last`` values kept when a row has more."""

    max_len: int
    separator: str = "|"
    keep: str = "last"


@dataclass
class Preprocessor:
    categorical: list[str]  # every categorical field in layout order, multi-hot ones included
    dense: list[str]
    vocabularies: dict[str, list[int] | list[str]]  # field -> values in index order 1..n (empty when hashed)
    dense_stats: dict[str, DenseStats]
    clip_sigma: float
    label: str
    version: int = ARTIFACT_VERSION
    hashed: dict[str, int] = field(default_factory=dict)  # field -> buckets (ids 1..buckets; 0 = missing)
    multi_hot: dict[str, BagSpec] = field(default_factory=dict)  # multi-hot field -> its bag (vocabulary of str)

    def __post_init__(self):
        self.multi_hot = {f: b if isinstance(b, BagSpec) else BagSpec(**b) for f, b in self.multi_hot.items()}
        self._indexes = {f: pd.Index(v) for f, v in self.vocabularies.items()}
        self._numeric = {f: all(isinstance(x, int) for x in v) for f, v in self.vocabularies.items()}
        # Build each Index's hash engine now: pandas builds it lazily, and first concurrent get_indexer calls
        # (a Serve replica runs requests in a thread pool) race on it and raise "Reindexing only valid with
        # uniquely valued Index objects" (seen as HTTP 500s right after a deploy).
        for index in self._indexes.values():
            index.get_indexer(index[:1])

    # --- the model's view -------------------------------------------------------------------------------
    def layout(self) -> FeatureLayout:
        return FeatureLayout(cardinalities=tuple(self.hashed[f] + 1 if f in self.hashed else len(self.vocabularies[f]) + 1
                                                 for f in self.categorical),
                             n_dense=len(self.dense), bag_sizes=self.bag_sizes)

    @property
    def bag_sizes(self) -> tuple[int, ...]:
        """Id columns per categorical field: ``max_len`` for a multi-hot one, else 1."""
        return tuple(self.multi_hot[f].max_len if f in self.multi_hot else 1 for f in self.categorical)

    def id_column(self, name: str) -> int:
        """First column of categorical field ``name`` in ``transform(...)[CATEGORICAL]``."""
        return sum(self.bag_sizes[:self.categorical.index(name)])

    def transform(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw feature columns -> :data:`CATEGORICAL` int64 [B, n_id_columns] and :data:`DENSE` float32
        [B, n_dense] (the columns of a :class:`mixrec.models.batch.Batch`).

        Unknown, rare and missing categorical values map to 0 (OOV); missing dense values to the train mean.
        A multi-hot field (a list column or delimited strings) fills its ``max_len`` columns with its values'
        ids, padded with 0. A missing column raises KeyError naming it.
        """
        missing = [c for c in (*self.categorical, *self.dense) if c not in frame.columns]
        if missing:
            raise KeyError(f"preprocessing input lacks column(s) {missing}")
        n = len(frame)
        cat = np.zeros((n, sum(self.bag_sizes)), dtype=np.int64)
        starts = np.cumsum((0, *self.bag_sizes))
        for j, name in zip(starts, self.categorical, strict=False):
            if name in self.multi_hot:
                bag = self.multi_hot[name]
                values, rows = _bag_values(frame[name], name, bag.separator)
                ids = (hash_to_buckets(pd.Series(values, dtype=object), self.hashed[name]) if name in self.hashed
                       else self._indexes[name].get_indexer(values) + 1)
                cat[:, j:j + bag.max_len] = place(ids, rows, n, bag.max_len, bag.keep)
            elif name in self.hashed:
                cat[:, j] = hash_to_buckets(frame[name], self.hashed[name])
            elif self._numeric[name]:
                values = pd.to_numeric(frame[name], errors="coerce")
                cat[:, j] = self._indexes[name].get_indexer(values.astype("float64")) + 1  # -1 where unseen or NaN
            else:
                cat[:, j] = self._indexes[name].get_indexer(frame[name].astype(object)) + 1
        dense = np.zeros((n, len(self.dense)), dtype=np.float32)
        for j, name in enumerate(self.dense):
            s = self.dense_stats[name]
            x = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            if s.log1p:
                x = np.log1p(np.clip(x, 0.0, None))
            x = np.where(np.isfinite(x), x, s.mean)
            dense[:, j] = np.clip((x - s.mean) / s.std, -self.clip_sigma, self.clip_sigma)
        return {CATEGORICAL: cat, DENSE: dense}

    def transform_batch(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` function for labelled rows: features + float32 :data:`LABEL`."""
        out = self.transform(batch)
        out[LABEL] = batch[self.label].to_numpy(dtype=np.float32)
        return out

    # --- persistence ------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = asdict(self)
        d["dense_stats"] = {k: asdict(v) for k, v in self.dense_stats.items()}
        if not self.multi_hot:  # without multi-hot fields the artifact is the one earlier mixrec versions read
            del d["multi_hot"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Preprocessor:
        if d.get("version") != ARTIFACT_VERSION:
            raise ValueError(f"preprocessing artifact version {d.get('version')} is not supported "
                             f"(this mixrec reads version {ARTIFACT_VERSION})")
        d = dict(d)
        d["dense_stats"] = {k: DenseStats(**v) for k, v in d["dense_stats"].items()}
        return cls(**d)

    def save(self, directory: Path) -> Path:
        return write_json_atomic(self.to_json(), Path(directory) / ARTIFACT_NAME, indent=None)

    @classmethod
    def load(cls, directory: Path) -> Preprocessor:
        return cls.from_json(json.loads((Path(directory) / ARTIFACT_NAME).read_text()))


def _canonical(values: pd.Series) -> pd.Series:
    """Categorical values as strings, integers without a decimal point (12, not 12.0); missing stays missing."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return pd.to_numeric(values, errors="coerce").astype("Int64").astype("string")
    return values.astype("string")


def hash_to_buckets(values: pd.Series, buckets: int) -> np.ndarray:
    """Stable hash of each value into ids 1..buckets (0 for missing): same id in every process and run."""
    text = _canonical(values)
    missing = text.isna().to_numpy()
    hashed = pd.util.hash_array(text.fillna("").to_numpy(dtype=object))
    return np.where(missing, 0, 1 + (hashed % np.uint64(buckets)).astype(np.int64))


def _bag_values(values: pd.Series, name: str, separator: str) -> tuple[np.ndarray, np.ndarray]:
    """A multi-hot column -> (its values as str, the row of each), every row's values in order."""
    try:
        return flat_values(series_value_lists(values, separator))
    except ValueError as err:
        raise ValueError(f"multi-hot field {name!r}: {err}") from None


def partial_stats(batch: pd.DataFrame, categorical: list[str], dense: list[tuple[str, bool]],
                   multi_hot: dict[str, str] | None = None) -> pd.DataFrame:
    """Per-batch value counts and dense moments, as rows (stat, field, value, numeric, count, sum, sumsq);
    categorical values travel as strings (``numeric`` says whether to read them back as integers). A multi-hot
    field (``multi_hot``: name -> separator) counts each value of each row's list; its values stay strings."""
    parts = []
    multi_hot = multi_hot or {}
    for name in categorical:
        numeric = name not in multi_hot and pd.api.types.is_numeric_dtype(batch[name].dtype)
        vc = (pd.Series(_bag_values(batch[name], name, multi_hot[name])[0], dtype=object).value_counts()
              if name in multi_hot else _canonical(batch[name]).dropna().value_counts())
        parts.append(pd.DataFrame({"stat": "count", "field": name, "value": vc.index.to_numpy(dtype=object).astype(str),
                                   "numeric": numeric, "count": vc.to_numpy(np.int64), "sum": 0.0, "sumsq": 0.0}))
    for name, log1p in dense:
        x = pd.to_numeric(batch[name], errors="coerce").to_numpy(np.float64)
        if log1p:
            x = np.log1p(np.clip(x, 0.0, None))
        x = x[np.isfinite(x)]
        parts.append(pd.DataFrame({"stat": ["moments"], "field": [name], "value": [""], "numeric": [True],
                                   "count": [x.size],
                                   "sum": [x.sum()], "sumsq": [(x * x).sum()]}))
    return pd.concat(parts, ignore_index=True)


class PartialStats:
    """Running totals of :func:`partial_stats` frames: rows with the same (stat, field, value) are summed
    whenever enough have accumulated; a field whose distinct values exceed ``hash_above`` is dropped from
    the totals (it will be hashed: its vocabulary is not needed)."""

    KEYS = ["stat", "field", "value", "numeric"]

    def __init__(self, hash_above: int, compact_rows: int = 1_000_000):
        self.hash_above, self.compact_rows = hash_above, compact_rows
        self.overflowed: set[str] = set()
        self._parts: list[pd.DataFrame] = []
        self._pending = 0

    def add(self, partial: pd.DataFrame) -> None:
        if self.overflowed:
            partial = partial[~partial["field"].isin(self.overflowed)]
        self._parts.append(partial)
        self._pending += len(partial)
        if self._pending >= self.compact_rows:
            self._compact()

    def _compact(self) -> None:
        frame = pd.concat(self._parts, ignore_index=True)
        frame = frame.groupby(self.KEYS, as_index=False, sort=False)[["count", "sum", "sumsq"]].sum()
        distinct = frame[frame["stat"] == "count"].groupby("field").size()
        self.overflowed |= set(distinct.index[distinct.to_numpy() > self.hash_above])
        frame = frame[~frame["field"].isin(self.overflowed)]
        self._parts, self._pending = [frame], len(frame)

    def result(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame(columns=[*self.KEYS, "count", "sum", "sumsq"])
        self._compact()
        return self._parts[0]


def fit_preprocessor(train_ds, schema: DatasetSchema, min_count: int, clip_sigma: float,
                     hash_above: int = 100_000, hash_buckets: int = 2**18) -> Preprocessor:
    """Fit on the training split (a Ray Dataset) as a streaming reduction: each batch yields partial counts
    and moments (:func:`partial_stats`), which the driver folds into running totals as they arrive, so its
    memory is bounded by the vocabularies, not the rows."""
    kwargs = partial_stats_kwargs(schema)
    partials = train_ds.map_batches(partial_stats, fn_kwargs=kwargs, batch_format="pandas")
    return fit_from_partials(partials.iter_batches(batch_format="pandas", batch_size=None), schema, min_count,
                             clip_sigma, hash_above, hash_buckets)


def partial_stats_kwargs(schema: DatasetSchema) -> dict:
    """The keyword arguments of :func:`partial_stats` for a schema."""
    return {"categorical": [f.name for f in schema.categorical], "dense": [(f.name, f.log1p) for f in schema.dense],
            "multi_hot": {f.name: f.separator for f in schema.multi_hot}}


def fit_from_partials(partial_frames, schema: DatasetSchema, min_count: int, clip_sigma: float,
                      hash_above: int = 100_000, hash_buckets: int = 2**18) -> Preprocessor:
    """A :class:`Preprocessor` from an iterable of :func:`partial_stats` frames (:class:`PartialStats` folds
    them). A field with more than ``hash_above`` distinct train values is hashed into ``hash_buckets`` buckets
    (its values stop being counted as soon as it crosses that); for a multi-hot field these are counts of its
    values (each occurrence in each row's list)."""
    categorical = [f.name for f in schema.categorical]
    dense = [(f.name, f.log1p) for f in schema.dense]
    totals = PartialStats(hash_above)
    for frame in partial_frames:
        totals.add(frame)
    partials = totals.result()
    vocabularies, hashed = {}, {}
    for name in categorical:
        rows = partials[(partials["stat"] == "count") & (partials["field"] == name)]
        counts = rows.groupby("value")["count"].sum()
        if name in totals.overflowed or len(counts) > hash_above:
            vocabularies[name], hashed[name] = [], hash_buckets
            continue
        kept = counts.index[counts.to_numpy() >= min_count]
        numeric = bool(rows["numeric"].all())
        vocabularies[name] = sorted(int(v) for v in kept) if numeric else sorted(str(v) for v in kept)
    stats = {}
    for name, log1p in dense:
        rows = partials[(partials["stat"] == "moments") & (partials["field"] == name)]
        n, s, ss = rows["count"].sum(), rows["sum"].sum(), rows["sumsq"].sum()
        if n == 0:
            raise ValueError(f"dense field {name!r} has no finite values in the training split")
        mean = s / n
        std = float(np.sqrt(max(ss / n - mean * mean, 0.0))) or 1.0
        stats[name] = DenseStats(mean=float(mean), std=std, log1p=log1p)
    bags = {f.name: BagSpec(max_len=f.max_len, separator=f.separator, keep=f.keep) for f in schema.multi_hot}
    return Preprocessor(categorical=categorical, dense=[d for d, _ in dense], vocabularies=vocabularies,
                        dense_stats=stats, clip_sigma=clip_sigma, label=schema.label, hashed=hashed, multi_hot=bags)
