"""Adapters: stream a dataset's files (Criteo TSV, libfm, CSV, Parquet) into the canonical Parquet sources.

Every format is read in record batches (never the whole file at once) and normalized to one layout: the
label as int64 0/1, entity keys and integer categoricals as int64, string categoricals as strings, multi-hot
fields as lists of strings (from a list column or a delimited string: features/multihot.py), dense fields as
float32, an event key (``_row_id`` when the dataset has none), a UTC event timestamp
(``_event_timestamp`` from row order when it has none) and the ``split`` column of the split policy.
A file that cannot be read raises :class:`DatasetError` naming the file and the column; outputs are written to
a temporary name and renamed, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .dataset import (
    CRITEO_CATEGORICAL,
    CRITEO_COLUMNS,
    CRITEO_DENSE,
    EVENT_TIME,
    ROW_ID,
    SPLIT_COLUMN,
    SPLITS,
    DatasetError,
    DatasetSpec,
)
from .multihot import to_value_lists

# Datasets without timestamps get one event per second from this instant, in file order (train, valid, test).
SYNTHETIC_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
BATCH_ROWS = 65_536
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


# --- reading one file -----------------------------------------------------------------------------------
def _csv_types(spec: DatasetSpec) -> dict[str, pa.DataType]:
    keys = {e.key for e in spec.entities.values()}
    types = {spec.label: pa.float64()}
    for kind, f in spec.fields_with_kind():
        types[f.name] = pa.float64() if kind == "dense" else pa.string()
    types.update({k: pa.int64() for k in keys})
    if spec.event_key:
        types[spec.event_key] = pa.int64()
    return types


def _value_lists(path: Path, name: str, array: pa.Array, separator: str) -> pa.Array:
    try:
        return to_value_lists(array, separator)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DatasetError(f"{path}: multi-hot column {name!r}: {err}") from None


def _arrow_error(path: Path, err: Exception, names: list[str] | None) -> DatasetError:
    """Turn a pyarrow reading error into one that names the file and, where pyarrow gives it, the column."""
    text = str(err).strip().splitlines()[0]
    match = re.search(r"column #(\d+)", text)
    if match and names and int(match.group(1)) < len(names):
        text = f"column {names[int(match.group(1))]!r}: {text}"
    elif "Empty CSV file" in text or "Empty file" in text:
        text = "the file is empty"
    return DatasetError(f"{path}: {text}")


def _open_csv(path: Path, names: list[str] | None, delimiter: str, types: dict[str, pa.DataType]):
    read = pacsv.ReadOptions(column_names=names, block_size=8 << 20)
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter in "\t " else '"')
    convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    try:
        return pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as err:
        raise _arrow_error(path, err, names or _header(path, delimiter)) from None


def _header(path: Path, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\r\n").split(delimiter)


def _csv_batches(path: Path, names: list[str] | None, delimiter: str, types: dict) -> Iterator[pa.RecordBatch]:
    reader = _open_csv(path, names, delimiter, types)
    header = names or reader.schema.names
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as err:
            raise _arrow_error(path, err, header) from None
        yield batch


def _parquet_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(f"{path}: not a readable Parquet file (truncated or corrupt?): {err}") from None
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the file has {pf.schema_arrow.names}")
    try:
        yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(f"{path}: not a readable Parquet file (truncated or corrupt?): {err}") from None


def _libfm_to_columns(batch: pa.RecordBatch, names: list[str]) -> pa.RecordBatch:
    """libfm ``label idx:val idx:val ...``: label -1/0 -> 0, >0 -> 1; each field keeps its index (before ':')."""
    label = pc.greater(pc.cast(batch.column(0), pa.float64()), 0.0)
    arrays = [pc.cast(label, pa.int64())]
    for i in range(1, len(names)):
        index = pc.replace_substring_regex(batch.column(i), pattern=r":.*$", replacement="")
        arrays.append(pc.cast(index, pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def read_batches(spec: DatasetSpec, path: Path) -> Iterator[pa.RecordBatch]:
    """Raw event batches of one file with the spec's columns (not yet normalized)."""
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty")
    needed = spec.raw_columns()
    if spec.format == "parquet":
        yield from _parquet_batches(path, needed)
        return
    if spec.format == "libfm":
        names = list(spec.columns or [])
        for batch in _csv_batches(path, names, " ", {n: pa.string() for n in names}):
            yield _libfm_to_columns(batch, names)
        return
    if spec.format == "criteo_tsv":
        names, delimiter = list(CRITEO_COLUMNS), "\t"
        types = {"label": pa.float64(), **{c: pa.float64() for c in CRITEO_DENSE},
                 **{c: pa.string() for c in CRITEO_CATEGORICAL}}
    else:
        names, delimiter, types = (None if spec.header else spec.columns), spec.delimiter, _csv_types(spec)
    for batch in _csv_batches(path, names, delimiter, types):
        missing = [c for c in needed if c not in batch.schema.names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} with delimiter {delimiter!r}; "
                               f"the file has {batch.schema.names[:8]}{' ...' if batch.num_columns > 8 else ''}")
        yield batch.select(needed)


# --- normalizing ----------------------------------------------------------------------------------------
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


def _normalize(spec: DatasetSpec, path: Path, batch: pa.RecordBatch) -> dict[str, pa.Array]:
    keys = {e.key for e in spec.entities.values()} | ({spec.event_key} if spec.event_key else set())
    kinds = {f.name: kind for kind, f in spec.fields_with_kind()}
    separators = {f.name: f.separator for f in spec.multi_hot}
    out: dict[str, pa.Array] = {}
    for name in batch.schema.names:
        array = batch.column(name)
        if name in separators:
            out[name] = _value_lists(path, name, array, separators[name])
        elif name in keys or name == spec.label:
            out[name] = _as_int64(path, name, array)
        elif name == spec.timestamp:
            try:
                out[name] = pc.cast(array, UTC_MICROS) if pa.types.is_timestamp(array.type) else \
                    pc.cast(pc.cast(array, pa.timestamp("us")), UTC_MICROS)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise DatasetError(f"{path}: column {name!r} is not a timestamp: {err}") from None
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


# --- splits ---------------------------------------------------------------------------------------------
def time_cuts(timestamps: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Int64 timestamp quantiles: rows <= the first are train, <= the second valid, the rest test."""
    train_end, valid_end = np.quantile(timestamps, [1 - valid_fraction - test_fraction, 1 - test_fraction])
    return int(train_end), int(valid_end)


def split_by_time(timestamps: np.ndarray, cuts: tuple[int, int]) -> np.ndarray:
    return np.where(timestamps <= cuts[0], "train", np.where(timestamps <= cuts[1], "valid", "test"))


def split_at_random(row_ids: np.ndarray, seed: int, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """A seeded hash of the row id: the same row lands in the same split however the data is chunked."""
    u = pd.util.hash_array(row_ids.astype(np.int64) ^ np.int64(seed)).astype(np.float64) / 2.0**64
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + valid_fraction, "valid", "train"))


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


def _time_split_cuts(spec: DatasetSpec, root: Path, max_rows: int | None) -> tuple[int, int]:
    """First pass for the time policy: read only the timestamp column (8 bytes a row) to place the cuts."""
    parts = []
    for _, path in _ordered_files(spec, root):
        for batch in _limited(read_batches(spec, path), max_rows):
            ts = _normalize(spec, path, batch.select([spec.timestamp]))[spec.timestamp]
            parts.append(pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False))
    return time_cuts(np.concatenate(parts), spec.split.valid_fraction, spec.split.test_fraction)


class _AtomicParquet:
    """A Parquet file written batch by batch to a temporary name, renamed into place on success only."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table, source: Path) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        elif table.schema != self.writer.schema:
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, ValueError) as err:
                raise DatasetError(f"{source}: columns differ in type from the first file: {err}") from None
        self.writer.write_table(table)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.writer is not None:
            self.writer.close()
        if exc_type is None and self.writer is not None:
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()
        return False


def write_event_source(spec: DatasetSpec, root: Path, out: Path, max_rows: int | None = None) -> SourceInfo:
    """Stream every file of the dataset into one canonical events Parquet (``max_rows`` per file at most)."""
    cuts = _time_split_cuts(spec, root, max_rows) if spec.split.policy == "time" else None
    info = SourceInfo(events=out, split_rows={})
    ts_min, ts_max = None, None
    with _AtomicParquet(out) as sink:
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
                ts = pc.cast(cols[spec.timestamp_column], pa.int64()).to_numpy(zero_copy_only=False)
                if spec.split.policy == "given":
                    split = np.full(n, split_name)
                elif spec.split.policy == "time":
                    split = split_by_time(ts, cuts)
                else:
                    keys = pc.cast(cols[spec.event_key_column], pa.int64()).to_numpy(zero_copy_only=False)
                    split = split_at_random(keys, spec.split.seed, spec.split.valid_fraction, spec.split.test_fraction)
                cols[SPLIT_COLUMN] = pa.array(split)
                sink.write(pa.table(cols), path)
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
    """Normalize an entity feature file (key int64, UTC timestamp, fields) for Feast; streamed, atomic."""
    e = spec.entities[entity]  # type: ignore[index]
    path = resolve(root, e.file or "")
    fields = [f for _, f in spec.fields_with_kind() if f.source == entity]
    kinds = {f.name: kind for kind, f in spec.fields_with_kind()}
    with _AtomicParquet(out) as sink:
        for batch in _parquet_batches(path, [e.key, e.timestamp, *(f.name for f in fields)]):
            cols = {e.key: _as_int64(path, e.key, batch.column(e.key)),
                    "event_timestamp": pc.cast(batch.column(e.timestamp), UTC_MICROS)}
            for f in fields:
                array = batch.column(f.name)
                cols[f.name] = (pc.cast(array, pa.float32()) if kinds[f.name] == "dense"
                                else _value_lists(path, f.name, array, f.separator) if kinds[f.name] == "multi_hot"
                                else _as_int64(path, f.name, array) if not pa.types.is_string(array.type) else array)
            sink.write(pa.table(cols), path)
    if not out.exists():
        raise DatasetError(f"{path}: the entity file holds no rows")
    return out


def write_sources(spec: DatasetSpec, root: Path, directory: Path, max_rows: int | None = None) -> SourceInfo:
    """All sources of a dataset: ``events.parquet`` (with the row features) and one file per entity."""
    info = write_event_source(spec, root, directory / "events.parquet", max_rows)
    for entity, e in spec.entities.items():
        if e.file:
            info.entities[entity] = write_entity_source(spec, entity, root, directory / f"{entity}s.parquet")
    return info
