"""Adapters: stream a dataset's files (Criteo TSV, libfm, CSV, Parquet) into the canonical Parquet sources.

Every file is read in record batches (features/readers.py) and normalized to one layout: the label as int64
0/1, keys (event, user, item) as int64 or, when declared ``string``, as strings (hex hashes, UUIDs, ids of
any width), integer categoricals as int64, string categoricals as strings, multi-hot fields as lists
of strings (from a list column or a delimited string: features/multihot.py), dense fields as float32, an
event key (``_row_id`` when the dataset has none), a UTC event timestamp (``_event_timestamp`` from row order
when it has none) and the ``split`` column of the split policy (features/splits.py).
A value that does not fit raises :class:`DatasetError` naming the file and the column; outputs are written
all or nothing (features/io.py), so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .dataset import EVENT_TIME, ROW_ID, SPLIT_COLUMN, SPLITS, DatasetError, DatasetSpec, with_key_hint
from .io import AtomicParquetWriter
from .multihot import to_value_lists
from .readers import parquet_batches, read_batches
from .splits import assign_splits, time_split_cuts

# Datasets without timestamps get one event per second from this instant, in file order (train, valid, test).
SYNTHETIC_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
UTC_MICROS = pa.timestamp("us", tz="UTC")


@dataclass
class SourceInfo:
    """What the conversion wrote: paths per source and row counts per split."""

    events: Path
    entities: dict[str, Path] = field(default_factory=dict)
    rows: int = 0
    split_rows: dict[str, int] = field(default_factory=dict)
    min_time: pd.Timestamp | None = None
    max_time: pd.Timestamp | None = None


def resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


# --- normalizing ----------------------------------------------------------------------------------------
def _value_lists(path: Path, name: str, array: pa.Array, separator: str) -> pa.Array:
    try:
        return to_value_lists(array, separator)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DatasetError(f"{path}: multi-hot column {name!r}: {err}") from None


def _as_int64(path: Path, name: str, array: pa.Array) -> pa.Array:
    try:
        if pa.types.is_floating(array.type):
            values = array.to_numpy(zero_copy_only=False)
            finite = values[~np.isnan(values)]
            if not np.array_equal(finite, np.round(finite)):
                raise DatasetError(f"{path}: column {name!r} must hold integers, found fractional values")
        return pc.cast(array, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DatasetError(f"{path}: column {name!r} must hold integers: {err}") from None


def _as_key(path: Path, name: str, array: pa.Array, key_type: str) -> pa.Array:
    """A key column as its declared type: int64, or strings (integers of any width become their digits)."""
    if key_type != "string":
        return _as_int64(path, name, array)
    if pa.types.is_floating(array.type):  # a key column of floats: whole numbers only, written without ".0"
        array = _as_int64(path, name, array)
    return pc.cast(array, pa.string())


def _as_utc(path: Path, name: str, array: pa.Array) -> pa.Array:
    try:
        return pc.cast(array, UTC_MICROS) if pa.types.is_timestamp(array.type) else \
            pc.cast(pc.cast(array, pa.timestamp("us")), UTC_MICROS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DatasetError(f"{path}: column {name!r} is not a timestamp: {err}") from None


def _normalize(spec: DatasetSpec, path: Path, batch: pa.RecordBatch) -> dict[str, pa.Array]:
    keys = spec.key_types()
    kinds = {f.name: kind for kind, f in spec.fields_with_kind()}
    separators = {f.name: f.separator for f in spec.multi_hot}
    out: dict[str, pa.Array] = {}
    for name in batch.schema.names:
        array = batch.column(name)
        if name in separators:
            out[name] = _value_lists(path, name, array, separators[name])
        elif name in keys:
            out[name] = _as_key(path, name, array, keys[name])
        elif name == spec.label:
            out[name] = _as_int64(path, name, array)
        elif name == spec.timestamp:
            out[name] = _as_utc(path, name, array)
        elif kinds.get(name) == "dense":
            try:
                out[name] = pc.cast(array, pa.float32())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise DatasetError(f"{path}: dense column {name!r} has non-numeric values: {err}") from None
        elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
            out[name] = _as_int64(path, name, array)
        else:
            out[name] = pc.cast(array, pa.string())
    return out


def _int64_values(array: pa.Array) -> np.ndarray:
    return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False)


# --- writing the sources --------------------------------------------------------------------------------
def _ordered_files(spec: DatasetSpec, root: Path) -> list[tuple[str, Path]]:
    order = {name: i for i, name in enumerate(SPLITS)}
    return [(name, resolve(root, p)) for name, p in sorted(spec.files.items(), key=lambda kv: order.get(kv[0], 9))]


def _limited(batches: Iterator[pa.RecordBatch], max_rows: int | None) -> Iterator[pa.RecordBatch]:
    seen = 0
    for batch in batches:
        if max_rows is not None and seen + batch.num_rows > max_rows:
            batch = batch.slice(0, max_rows - seen)
        seen += batch.num_rows
        if batch.num_rows:
            yield batch
        if max_rows is not None and seen >= max_rows:
            return


def _timestamps(spec: DatasetSpec, root: Path, max_rows: int | None) -> Iterator[np.ndarray]:
    """The time policy's first pass: only the timestamp column of every file."""
    for _, path in _ordered_files(spec, root):
        for batch in _limited(read_batches(spec, path), max_rows):
            yield _int64_values(_as_utc(path, spec.timestamp, batch.column(spec.timestamp)))


def _append(sink: AtomicParquetWriter, table: pa.Table, source: Path) -> None:
    try:
        sink.write(table)
    except (pa.ArrowInvalid, ValueError) as err:
        raise DatasetError(f"{source}: columns differ in type from the first file: {err}") from None


def write_event_source(spec: DatasetSpec, root: Path, out: Path, max_rows: int | None = None) -> SourceInfo:
    """Stream every file of the dataset into one canonical events Parquet (``max_rows`` per file at most)."""
    cuts = time_split_cuts(_timestamps(spec, root, max_rows), spec.split) if spec.split.policy == "time" else None
    info = SourceInfo(events=out, split_rows={})
    ts_min, ts_max = None, None
    with AtomicParquetWriter(out) as sink:
        for split_name, path in _ordered_files(spec, root):
            for batch in _limited(read_batches(spec, path), max_rows):
                cols = _normalize(spec, path, batch)
                n = batch.num_rows
                row_id = np.arange(info.rows, info.rows + n, dtype=np.int64)
                if not spec.event_key:
                    cols[ROW_ID] = pa.array(row_id)
                if not spec.timestamp:
                    cols[EVENT_TIME] = pa.array(SYNTHETIC_EPOCH.value // 1000 + row_id * 1_000_000,
                                                type=pa.int64()).cast(UTC_MICROS)
                ts = _int64_values(cols[spec.timestamp_column])
                split = assign_splits(spec.split, split_name, ts, cols[spec.event_key_column].to_numpy(zero_copy_only=False),
                                       cuts)
                cols[SPLIT_COLUMN] = pa.array(split)
                _append(sink, pa.table(cols), path)
                info.rows += n
                for name, count in zip(*np.unique(split, return_counts=True), strict=True):
                    info.split_rows[str(name)] = info.split_rows.get(str(name), 0) + int(count)
                ts_min = ts.min() if ts_min is None else min(ts_min, ts.min())
                ts_max = ts.max() if ts_max is None else max(ts_max, ts.max())
    if info.rows == 0:
        raise DatasetError(f"dataset {spec.name!r}: the files hold no rows")
    info.min_time, info.max_time = pd.Timestamp(int(ts_min), unit="us", tz="UTC"), pd.Timestamp(int(ts_max), unit="us", tz="UTC")
    return info


def write_entity_source(spec: DatasetSpec, entity: str, root: Path, out: Path) -> Path:
    """Normalize an entity feature file (key int64 or string, UTC timestamp, fields) for Feast; streamed, atomic."""
    e = spec.entities[entity]  # type: ignore[index]
    path = resolve(root, e.file or "")
    fields = [f for _, f in spec.fields_with_kind() if f.source == entity]
    kinds = {f.name: kind for kind, f in spec.fields_with_kind()}
    with AtomicParquetWriter(out) as sink:
        for batch in parquet_batches(path, [e.key, e.timestamp, *(f.name for f in fields)]):
            cols = {e.key: _as_key(path, e.key, batch.column(e.key), e.key_type),
                    "event_timestamp": pc.cast(batch.column(e.timestamp), UTC_MICROS)}
            for f in fields:
                array = batch.column(f.name)
                cols[f.name] = (pc.cast(array, pa.float32()) if kinds[f.name] == "dense"
                                else _value_lists(path, f.name, array, f.separator) if kinds[f.name] == "multi_hot"
                                else _as_int64(path, f.name, array) if not pa.types.is_string(array.type) else array)
            _append(sink, pa.table(cols), path)
    if not out.exists():
        raise DatasetError(f"{path}: the entity file holds no rows")
    return out


def write_sources(spec: DatasetSpec, root: Path, directory: Path, max_rows: int | None = None) -> SourceInfo:
    """All sources of a dataset: ``events.parquet`` (with the row features) and one file per entity."""
    try:
        return _write_sources(spec, root, directory, max_rows)
    except DatasetError as err:  # an int key holding text: say how to declare it a string key
        raise DatasetError(with_key_hint(str(err), spec)) from None


def _write_sources(spec: DatasetSpec, root: Path, directory: Path, max_rows: int | None) -> SourceInfo:
    info = write_event_source(spec, root, directory / "events.parquet", max_rows)
    for entity, e in spec.entities.items():
        if e.file:
            info.entities[entity] = write_entity_source(spec, entity, root, directory / f"{entity}s.parquet")
    return info
