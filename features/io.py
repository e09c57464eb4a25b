"""All-or-nothing writes: every output of a run appears complete or not at all (written beside, then renamed)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write a file or a folder into; when the block ends
    without error it replaces ``path`` (an earlier file or folder there is removed), and it is gone either way.
    For writers that want a path of their own (``torch.save``, a folder of shards, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
    finally:
        _remove(tmp)


def write_dataset_atomic(ds, path: Path) -> Path:
    """Ray Dataset -> a Parquet folder at ``path``, streaming (blocks go to disk as they are produced, never
    all into the object store), all or nothing: written beside it, then renamed."""
    with atomic_path(path) as tmp:
        ds.write_parquet(str(tmp))
    return path


def write_tables_atomic(tables: Iterable, path: Path) -> int:
    """Arrow tables/batches -> one Parquet file at ``path`` (the first non-empty one's schema; the rest are cast
    to it), streaming, all or nothing; returns the rows written. No rows: no file (one left by an earlier run
    is removed, so ``path`` always describes this write)."""
    tmp = path.with_name(f".{path.name}.tmp")
    writer, rows = None, 0
    try:
        for table in tables:
            if table.num_rows == 0:
                continue
            if writer is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write(table.cast(writer.schema))
            rows += table.num_rows
        if writer is not None:
            writer.close()
            writer = None
            tmp.replace(path)
        else:
            path.unlink(missing_ok=True)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


def write_text_atomic(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json_atomic(data: dict, path: Path, indent: int | None = 2) -> Path:
    return write_text_atomic(json.dumps(data, indent=indent, default=str), path)
