"""All-or-nothing writes: every output of a run appears complete or not at all (written beside, then renamed)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq


def write_dataset_atomic(ds, path: Path) -> Path:
    """Ray Dataset -> a Parquet folder at ``path``, streaming (blocks go to disk as they are produced, never
    all into the object store), all or nothing: written beside it, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.write_parquet(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def write_json_atomic(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path
