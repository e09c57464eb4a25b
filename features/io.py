"""All-or-nothing writes: every output of a run appears complete or not at all (written beside, then renamed).

The one place that writes to a temporary name and renames: files (:func:`atomic_path`, text, JSON, a pandas
frame), streamed Parquet files (:class:`AtomicParquetWriter`, :func:`write_tables_atomic`) and Ray Dataset
folders (:func:`write_dataset_atomic`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write a file or a folder into; when the block ends
    without error it replaces ``path`` (an earlier file or folder there is removed), and it is gone either way
    (``path`` then keeps its previous content). For writers that want a path of their own (``torch.save``,
    a folder of shards, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            _remove(path)
        tmp.replace(path)
    finally:
        _remove(tmp)


def write_text_atomic(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json_atomic(data: dict, path: Path, indent: int | None = 2) -> Path:
    return write_text_atomic(json.dumps(data, indent=indent, default=str), path)


def write_frame_atomic(frame, path: Path) -> Path:
    """pandas DataFrame -> one Parquet file (without the index), all or nothing; a frame without rows still
    writes its schema."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    return path


class AtomicParquetWriter:
    """One Parquet file streamed table by table (or record batch) beside ``path`` and renamed into place when
    the ``with`` block ends without an error. The first non-empty table sets the schema, the rest are cast to
    it (a failed cast raises the cast's ``ArrowInvalid`` / ``ValueError``). No rows: no file, and one left
    by an earlier run is removed, so ``path`` always describes this write."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, _beside(path)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, table.schema)
        elif table.schema != self._writer.schema:
            table = table.cast(self._writer.schema)
        self._writer.write(table)
        self.rows += table.num_rows

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._writer is not None:
                self._writer.close()
            if exc_type is not None:
                return False
            if self._writer is not None:
                self.tmp.replace(self.path)
            else:
                self.path.unlink(missing_ok=True)
        finally:
            self._writer = None
            self.tmp.unlink(missing_ok=True)
        return False


def write_tables_atomic(tables: Iterable, path: Path) -> int:
    """Arrow tables/batches -> one Parquet file at ``path`` (see :class:`AtomicParquetWriter`); returns the
    rows written."""
    with AtomicParquetWriter(path) as sink:
        for table in tables:
            sink.write(table)
    return sink.rows


def write_dataset_atomic(ds, path: Path) -> Path:
    """Ray Dataset -> a Parquet folder at ``path``, streaming (blocks go to disk as they are produced, never
    all into the object store), all or nothing: written beside it, then renamed."""
    with atomic_path(path) as tmp:
        ds.write_parquet(str(tmp))
    return path
