"""Ingestion: dataset sources -> Feast point-in-time retrieval in bounded chunks -> Parquet shards for Ray Data.

The events Parquet is read in chunks of ``chunk_rows`` rows; each chunk, row features included, is the entity
dataframe of one Feast historical retrieval of the user and item views, whose joined rows are written as one
shard. With more than one chunk, each runs as a Ray task whose worker exits after it (``max_calls=1``):
Feast's pandas/dask join keeps memory that no later chunk reuses, and a process that exits gives it all back,
so no process grows with the dataset; ``parallelism`` chunks run at a time. A single chunk is joined in the
calling process: a fresh worker would spend longer importing Feast (about 6 s on 2 cores) than a small join
takes. Feast drops an event row whose entity has no feature row inside the TTL: every chunk's rows are counted
before and after, the dropped ones quarantined with the reason.

With the contrib Ray offline store a chunk's task does not join: it drives Ray Data tasks of its own (1 CPU
each). Holding a CPU while it waits for them would starve them once the chunks hold every CPU (two chunks on a
2-CPU instance hung), so such a task reserves no CPU and at most half the instance's CPUs' worth of chunks run at
once (:func:`chunk_plan`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.features import feast_repo
from mixrec.features.dataset import SPLIT_COLUMN
from mixrec.features.io import atomic_path, write_tables_atomic
from mixrec.features.schema import DatasetSchema

FEAST_DROPPED = "feast_point_in_time_join(no feature row within ttl)"
FAILED_COLUMN = "_failed_expectations"  # same column as the validation quarantine (pipelines.validate)


@dataclass
class RetrievalCounts:
    events: int = 0
    joined: int = 0
    dropped: int = 0
    shards: int = 0
    # Finite min/max of each dense column over the train rows, gathered chunk by chunk on the way (GX ranges).
    train_bounds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, chunk: dict) -> None:
        """Fold one chunk's counts and dense bounds (see :func:`_retrieve_chunk`)."""
        for key in ("events", "joined", "dropped"):
            setattr(self, key, getattr(self, key) + chunk[key])
        self.shards += chunk["joined"] > 0
        for col, (lo, hi) in chunk["bounds"].items():
            old_lo, old_hi = self.train_bounds.get(col, [np.inf, -np.inf])
            self.train_bounds[col] = [min(old_lo, lo), max(old_hi, hi)]


def train_bounds(table: pa.Table, columns: list[str], split_column: str) -> dict[str, list[float]]:
    """Finite min/max of each dense column over the table's train rows (all rows without a split column)."""
    train = np.asarray(table[split_column]) == "train" if split_column in table.column_names else None
    bounds = {}
    for col in columns:
        x = np.asarray(table[col], dtype=np.float64)
        x = x[np.isfinite(x) & (train if train is not None else True)]
        if x.size:
            bounds[col] = [float(x.min()), float(x.max())]
    return bounds


def join_chunk(store, events: pd.DataFrame, schema: DatasetSchema) -> tuple[pa.Table, pd.DataFrame]:
    """Point-in-time join of one chunk: (joined rows, the event rows Feast dropped)."""
    table = feast_repo.historical_features(store, events, schema)
    if feast_repo.store_type(store) in feast_repo.KEEPS_UNMATCHED_ROWS:
        # The store keeps an event with no feature row inside the TTL, its features null: drop it here, as the
        # file store does, so that it is quarantined for the same reason.
        table = table.filter(pa.array(feast_repo.matched_every_view(table, schema)))
    kept = np.asarray(table[schema.event_key])
    dropped = events[~events[schema.event_key].isin(kept)]
    if table.num_rows + len(dropped) != len(events):
        raise RuntimeError(f"feature retrieval returned {table.num_rows} rows for {len(events)} events "
                           f"with {len(dropped)} dropped: rows duplicated by the join?")
    return table, dropped.assign(**{FAILED_COLUMN: FEAST_DROPPED})


def _retrieve_chunk(repo_dir: str, events: pa.Table, schema: DatasetSchema, shard: str, dropped_path: str) -> dict:
    """One chunk, in a Ray task: point-in-time join, joined rows to ``shard``, dropped rows (with the
    reason) to ``dropped_path``; returns the counts and the train rows' dense bounds."""
    store = feast_repo.open_store(Path(repo_dir))
    joined, dropped = join_chunk(store, events.to_pandas(), schema)
    if joined.num_rows:
        pq.write_table(joined, shard)
    if len(dropped):
        pq.write_table(pa.Table.from_pandas(dropped, preserve_index=False), dropped_path)
    return {"events": events.num_rows, "joined": joined.num_rows, "dropped": len(dropped),
            "bounds": train_bounds(joined, [f.name for f in schema.dense], SPLIT_COLUMN)}


def offline_store_type(repo_dir: Path) -> str | None:
    """The ``offline_store.type`` of the Feast repo's ``feature_store.yaml`` (None without the file)."""
    import yaml

    path = Path(repo_dir) / "feature_store.yaml"
    if not path.exists():
        return None
    block = (yaml.safe_load(path.read_text()) or {}).get("offline_store") or {}
    return block.get("type", "file") if isinstance(block, dict) else str(block)


def chunk_plan(store_type: str | None, parallelism: int, cluster_cpus: float) -> tuple[float, int]:
    """(CPUs each retrieval chunk task reserves, chunks run at once). The file and DuckDB stores join inside
    the task: 1 CPU each, ``parallelism`` at once. The Ray store's task only waits for the Ray Data tasks it
    submits, which need whole CPUs: it reserves none, and at most ``cluster_cpus // 2`` (at least 1) chunks run
    at once, so each chunk's Ray Data work has a CPU or more to itself."""
    if store_type == "ray":
        return 0.0, max(1, min(parallelism, int(cluster_cpus // 2)))
    return 1.0, parallelism


def chunk_count(events_path: Path, chunk_rows: int) -> int:
    """How many retrieval chunks :func:`retrieve_to_shards` makes of ``events_path``."""
    return -(-pq.ParquetFile(events_path).metadata.num_rows // chunk_rows)


def retrieve_to_shards(repo_dir: Path, events_path: Path, schema: DatasetSchema, out_dir: Path,
                       quarantine_path: Path, chunk_rows: int, parallelism: int = 2,
                       on_chunk: Callable[[dict], None] | None = None) -> RetrievalCounts:
    """Stream ``events_path`` through Feast (the repo at ``repo_dir``), chunk by chunk in Ray tasks, into
    ``out_dir/part-*.parquet``; needs a running Ray.

    The shards are written into a temporary folder renamed into place at the end, so ``out_dir`` holds a
    complete retrieval or nothing; dropped rows go to ``quarantine_path`` (atomically; no file when none). The driver
    holds at most ``parallelism`` chunks' references (fewer with the Ray offline store, see :func:`chunk_plan`),
    never joined rows. ``on_chunk`` gets each finished
    chunk's counts (``events``, ``joined``, ``dropped``), in the order they finish.
    """
    import ray

    cpus, parallelism = chunk_plan(offline_store_type(repo_dir), parallelism, ray.cluster_resources().get("CPU", 0.0))
    # A fresh worker per chunk (module docstring).
    retrieve = ray.remote(max_calls=1, num_cpus=cpus)(_retrieve_chunk)
    single_chunk = pq.ParquetFile(events_path).metadata.num_rows <= chunk_rows
    counts = RetrievalCounts()

    def finished(chunk: dict) -> None:
        counts.add(chunk)
        if on_chunk:
            on_chunk(chunk)

    with atomic_path(out_dir) as tmp_dir:
        (tmp_dir / "dropped").mkdir(parents=True)
        pending = []
        try:
            for i, batch in enumerate(pq.ParquetFile(events_path).iter_batches(batch_size=chunk_rows)):
                if len(pending) >= parallelism:
                    done, pending = ray.wait(pending, num_returns=1)
                    finished(ray.get(done[0]))
                args = (str(repo_dir), pa.Table.from_batches([batch]), schema,
                        str(tmp_dir / f"part-{i:05d}.parquet"), str(tmp_dir / "dropped" / f"part-{i:05d}.parquet"))
                if single_chunk:
                    finished(_retrieve_chunk(*args))
                else:
                    pending.append(retrieve.remote(*args))
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                finished(ray.get(done[0]))
        finally:
            for ref in pending:  # after a failed chunk: no task may go on writing into the folder being removed
                ray.cancel(ref, force=True)
        if counts.joined + counts.dropped != counts.events:
            raise RuntimeError(f"retrieval lost rows: {counts}")
        dropped = sorted((tmp_dir / "dropped").glob("*.parquet"))
        write_tables_atomic((b for part in dropped for b in pq.ParquetFile(part).iter_batches()), quarantine_path)
        shutil.rmtree(tmp_dir / "dropped")
    return counts
