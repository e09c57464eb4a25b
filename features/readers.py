"""Readers: one dataset file (CSV, Parquet, libfm, Criteo TSV) as raw record batches, never the whole file.

Batches keep the file's own column types (the adapters normalise them). A file that cannot be read raises
:class:`DatasetError` naming the file and, where pyarrow gives it, the column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .dataset import CRITEO_CATEGORICAL, CRITEO_COLUMNS, CRITEO_DENSE, DatasetError, DatasetSpec

BATCH_ROWS = 65_536


def read_batches(spec: DatasetSpec, path: Path) -> Iterator[pa.RecordBatch]:
    """Raw event batches of one file with the spec's columns (not yet normalized)."""
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty")
    needed = spec.raw_columns()
    if spec.format == "parquet":
        yield from parquet_batches(path, needed)
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


def parquet_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """``columns`` of a Parquet file in batches of :data:`BATCH_ROWS`."""
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


# --- delimited text -------------------------------------------------------------------------------------
def _csv_types(spec: DatasetSpec) -> dict[str, pa.DataType]:
    types = {spec.label: pa.float64()}
    for kind, f in spec.fields_with_kind():
        types[f.name] = pa.float64() if kind == "dense" else pa.string()
    # int keys parse as int64 here (a bad value fails naming the column); string keys stay text, exactly
    types.update({k: pa.string() if t == "string" else pa.int64() for k, t in spec.key_types().items()})
    return types


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


def _libfm_to_columns(batch: pa.RecordBatch, names: list[str]) -> pa.RecordBatch:
    """libfm ``label idx:val idx:val ...``: label -1/0 -> 0, >0 -> 1; each field keeps its index (before ':')."""
    label = pc.greater(pc.cast(batch.column(0), pa.float64()), 0.0)
    arrays = [pc.cast(label, pa.int64())]
    for i in range(1, len(names)):
        index = pc.replace_substring_regex(batch.column(i), pattern=r":.*$", replacement="")
        arrays.append(pc.cast(index, pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, names=names)
