"""Ingestion: dataset sources -> Feast point-in-time retrieval in bounded chunks -> Parquet shards for Ray Data.

The events Parquet is read in chunks of ``chunk_rows`` rows; each chunk, row features included, is the entity
dataframe of one Feast historical retrieval of the user and item views, whose joined rows are written as one
shard. With more than one chunk, each runs as a Ray task whose worker exits after it (``max_calls=1``):
Feast's pandas/dask join keeps memory that no later chunk reuses, and a process that exits gives it all back,
so no process grows with the dataset; ``parallelism`` chunks run at a time. A single chunk is joined in the
calling process: a fresh worker would spend longer importing Feast (about 6 s on 2 cores) than a small join
takes. Feast drops an event row whose entity has no feature row inside the TTL: every chunk's rows are counted
before and after, the dropped ones quarantined with the reason.
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
    holds at most ``parallelism`` chunks' references, never joined rows. ``on_chunk`` gets each finished
    chunk's counts (``events``, ``joined``, ``dropped``), in the order they finish.
    """
    import ray

    retrieve = ray.remote(max_calls=1)(_retrieve_chunk)  # a fresh worker per chunk (module docstring)
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
