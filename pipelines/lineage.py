"""Lineage of a registered version: which data, schema, features, code and config produced it (as tags)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict
from pathlib import Path


def file_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of ``paths`` in the given order (the dataset's Parquet sources)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def schema_digest(schema) -> str:
    """sha256 of the dataset schema (columns, kinds, sources) as canonical JSON."""
    return hashlib.sha256(json.dumps(asdict(schema), sort_keys=True).encode()).hexdigest()


def git_commit(directory: Path) -> str | None:
    """HEAD of the git checkout holding ``directory`` (an installed wheel has none: None)."""
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def lineage_tags(sources: list[Path], schema, feature_service: str, config: dict) -> dict[str, str]:
    """The tags every registered version carries: what data, which schema and features, which code, which config."""
    tags = {"lineage.dataset_sha256": file_digest(sources), "lineage.schema_sha256": schema_digest(schema),
            "lineage.feast_feature_service": feature_service,
            "lineage.config": json.dumps(config, sort_keys=True, separators=(",", ":"))}
    commit = git_commit(Path(__file__).parent)
    if commit:
        tags["lineage.git_commit"] = commit
    return tags
