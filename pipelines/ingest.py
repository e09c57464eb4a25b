"""Ingestion: dataset sources -> Feast point-in-time retrieval in bounded chunks -> Parquet shards for Ray Data.

The events Parquet is read in chunks of ``chunk_rows`` rows; each chunk is the entity dataframe of one Feast
historical retrieval, and its joined rows are written as one shard. Memory on the driver is bounded by the
chunk, not the dataset. Feast drops an event row whose entity has no feature row inside the TTL: every
chunk's rows are counted before and after, the dropped ones quarantined with the reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.features import feast_repo
from mixrec.features.dataset import SPLIT_COLUMN
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

    def update_bounds(self, table: pa.Table, columns: list[str], split_column: str) -> None:
        train = np.asarray(table[split_column]) == "train" if split_column in table.column_names else None
        for col in columns:
            x = np.asarray(table[col], dtype=np.float64)
            x = x[np.isfinite(x) & (train if train is not None else True)]
            if x.size:
                lo, hi = self.train_bounds.get(col, [np.inf, -np.inf])
                self.train_bounds[col] = [min(lo, float(x.min())), max(hi, float(x.max()))]


def entity_columns(schema: DatasetSchema, events_path: Path) -> list[str]:
    """Columns of the events file that form the entity dataframe: all but the row-view features (Feast
    returns those)."""
    row_features = {f.name for f in schema.from_source("row")}
    return [c for c in pq.read_schema(events_path).names if c not in row_features]


def join_chunk(store, events: pd.DataFrame, schema: DatasetSchema) -> tuple[pa.Table, pd.DataFrame]:
    """Point-in-time join of one chunk: (joined rows, the event rows Feast dropped)."""
    table = feast_repo.historical_features(store, events)
    kept = np.asarray(table[schema.event_key])
    dropped = events[~events[schema.event_key].isin(kept)]
    if table.num_rows + len(dropped) != len(events):
        raise RuntimeError(f"feature retrieval returned {table.num_rows} rows for {len(events)} events "
                           f"with {len(dropped)} dropped: rows duplicated by the join?")
    return table, dropped.assign(**{FAILED_COLUMN: FEAST_DROPPED})


def retrieve_to_shards(store, events_path: Path, schema: DatasetSchema, out_dir: Path, quarantine_path: Path,
                       chunk_rows: int) -> RetrievalCounts:
    """Stream ``events_path`` through Feast chunk by chunk into ``out_dir/part-*.parquet``.

    The shards are written into a temporary folder renamed into place at the end, so ``out_dir`` holds a
    complete retrieval or nothing; dropped rows go to ``quarantine_path`` (atomically, only if any).
    """
    counts = RetrievalCounts()
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    q_tmp = quarantine_path.with_name(f".{quarantine_path.name}.tmp")
    q_writer = None
    try:
        columns = entity_columns(schema, events_path)
        for i, batch in enumerate(pq.ParquetFile(events_path).iter_batches(batch_size=chunk_rows, columns=columns)):
            events = batch.to_pandas()
            joined, dropped = join_chunk(store, events, schema)
            counts.events += len(events)
            counts.joined += joined.num_rows
            counts.dropped += len(dropped)
            counts.update_bounds(joined, [f.name for f in schema.dense], SPLIT_COLUMN)
            if joined.num_rows:
                pq.write_table(joined, tmp_dir / f"part-{i:05d}.parquet")
                counts.shards += 1
            if len(dropped):
                table = pa.Table.from_pandas(dropped, preserve_index=False)
                if q_writer is None:
                    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
                    q_writer = pq.ParquetWriter(q_tmp, table.schema)
                q_writer.write_table(table.cast(q_writer.schema))
        if counts.joined + counts.dropped != counts.events:
            raise RuntimeError(f"retrieval lost rows: {counts}")
        if q_writer is not None:
            q_writer.close()
            q_writer = None
            q_tmp.replace(quarantine_path)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp_dir.replace(out_dir)
    finally:
        if q_writer is not None:
            q_writer.close()
        q_tmp.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return counts
