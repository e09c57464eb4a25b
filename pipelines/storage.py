"""All-or-nothing writes: every output of a run appears complete or not at all (written beside, then renamed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


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


def write_json_atomic(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path
