"""Batch scoring (``mixrec score``): a registered model version over a Parquet/CSV file or folder of candidate
rows, on Ray Data, writing each row's keys and click probability to a Parquet folder.

A row is scored the way the server scores a candidate: its user and item features come from the Feast online
store by key (:mod:`mixrec.serving.features`), its request and row fields from its own columns, and the raw
row goes through the version's own preprocessing artifact; unknown keys get OOV embeddings and mean-imputed
features, never dropped. The input streams through ``map_batches`` in actors that load the model and open the
feature store once each, so memory stays flat however large the input is; the output folder is written all or
nothing (:func:`mixrec.features.io.write_dataset_atomic`) and holds exactly one row per input row, in input order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mixrec.features.io import write_dataset_atomic
from mixrec.features.schema import DatasetSchema
from mixrec.pipelines.errors import BadInput

from .features import online_matrix, to_float

SCORE_COLUMN = "score"
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class ScoreError(BadInput):
    """Input that cannot be scored; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ScoreResult:
    model_version: str
    rows: int
    output: Path


def lookup_sources(schema: DatasetSchema) -> tuple[str, ...]:
    """Entity sources whose features are read from the online store by key (``user``, ``item``)."""
    return tuple(s for s in ("user", "item") if schema.from_source(s))


def required_columns(schema: DatasetSchema) -> list[str]:
    """Input columns a row must have: the keys of the looked-up sources, then the model's other own columns."""
    looked_up = {f.name for s in lookup_sources(schema) for f in schema.from_source(s)}
    keys = [schema.entity_key(s) for s in lookup_sources(schema)]
    return list(dict.fromkeys([*keys, *(c for c in schema.model_columns if c not in looked_up)]))


def key_columns(schema: DatasetSchema, columns: list[str]) -> list[str]:
    """The key columns (event, user, item) the input has: they are written next to the scores."""
    return [k for k in schema.keys if k in columns]


def input_files(path: Path) -> tuple[str, list[Path]]:
    """A file, or a folder of ``.parquet``/``.csv`` files (one format, hidden files skipped) -> (format, files)."""
    if path.is_file():
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ScoreError(f"{path}: not a .parquet or .csv file")
        return fmt, [path]
    if not path.is_dir():
        raise ScoreError(f"input not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                   and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    formats = {FORMATS[p.suffix.lower()] for p in files}
    if len(formats) != 1:
        raise ScoreError(f"{path}: needs .parquet or .csv files of one format, found "
                         f"{sorted(formats) or 'none'}")
    return formats.pop(), files


def _columns(fmt: str, path: Path) -> list[str]:
    try:
        if fmt == "parquet":
            return pq.read_schema(path).names
        with pacsv.open_csv(path) as reader:
            return reader.schema.names
    except (pa.ArrowInvalid, OSError) as err:
        raise ScoreError(f"{path}: not a readable {fmt} file: {str(err).splitlines()[0]}") from None


def check_input(fmt: str, files: list[Path], schema: DatasetSchema) -> list[str]:
    """Every file is readable and has the required columns; returns the key columns they all have."""
    needed = required_columns(schema)
    common: list[str] | None = None
    for path in files:
        columns = _columns(fmt, path)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ScoreError(f"{path}: missing column(s) {missing}; scoring needs {needed}")
        common = [c for c in (common or columns) if c in columns]
    return key_columns(schema, common or [])


class BatchScorer:
    """Ray Data ``map_batches`` class: loads the version and opens the feature store once per actor."""

    def __init__(self, model_name: str, version: str, tracking_uri: str, repo_dir: str, schema: DatasetSchema,
                 keys: list[str], env: dict[str, str]):
        os.environ.update(env)
        import mlflow

        from mixrec.features import feast_repo
        from mixrec.pipelines.pyfunc import load_ranker

        mlflow.set_tracking_uri(tracking_uri)
        self.ranker = load_ranker(model_name, version)
        self.store = feast_repo.open_store(Path(repo_dir)) if lookup_sources(schema) else None
        self.schema, self.keys = schema, keys

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Rows (n,) -> the key columns and :data:`SCORE_COLUMN` float32 (n,)."""
        frame = model_frame(self.schema, batch, self.store)
        scores = self.ranker.score(frame)
        if len(scores) != len(batch):
            raise RuntimeError(f"scored {len(scores)} of {len(batch)} rows")
        return batch[self.keys].reset_index(drop=True).assign(**{SCORE_COLUMN: scores.astype(np.float32)})


def model_frame(schema: DatasetSchema, batch: pd.DataFrame, store) -> pd.DataFrame:
    """Candidate rows -> the model's raw input rows: own columns as given (dense ones as floats), user and item
    features from the online store by key (one read per source of the batch's distinct keys)."""
    dense = {f.name for f in schema.dense}
    columns = {c: to_float(batch[c].to_numpy(dtype=object)) if c in dense else batch[c].to_numpy()
               for c in required_columns(schema) if c in schema.model_columns}
    for source in lookup_sources(schema):
        key = schema.entity_key(source)
        ids = schema.key_array(key, batch[key].to_numpy())
        unique, inverse = np.unique(ids, return_inverse=True)
        values = online_matrix(store, schema, source, unique)[inverse]
        if key in schema.model_columns:
            columns[key] = ids
        for j, f in enumerate(schema.from_source(source)):
            columns[f.name] = values[:, j]
    return pd.DataFrame(columns)


def _read(fmt: str, files: list[Path], schema: DatasetSchema):
    import ray.data

    if fmt == "parquet":
        return ray.data.read_parquet([str(p) for p in files])
    # keys as text, whatever they look like (coerced to the dataset's key type when scored)
    types = {k: pa.string() for k in schema.keys}
    return ray.data.read_csv([str(p) for p in files], convert_options=pacsv.ConvertOptions(column_types=types))


def score_files(path: Path, output: Path, schema: DatasetSchema, model_name: str, version: str, tracking_uri: str,
                repo_dir: Path, env: dict[str, str], batch_size: int = 4096, workers: int = 1) -> ScoreResult:
    """Score every row under ``path`` with ``version`` into the Parquet folder ``output``; needs a running Ray."""
    import ray.data

    fmt, files = input_files(path)
    keys = check_input(fmt, files, schema)
    ctx = ray.data.DataContext.get_current()
    preserve = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # output rows in input order
    try:
        scored = _read(fmt, files, schema).map_batches(
            BatchScorer, fn_constructor_kwargs={"model_name": model_name, "version": version,
                                                "tracking_uri": tracking_uri, "repo_dir": str(repo_dir),
                                                "schema": schema, "keys": keys, "env": env},
            batch_size=batch_size, batch_format="pandas", concurrency=workers)
        write_dataset_atomic(scored, output)
    finally:
        ctx.execution_options.preserve_order = preserve
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in output.glob("*.parquet"))
    if fmt == "parquet":  # counted from the footers (a CSV's rows would take a second read)
        rows_in = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        if rows != rows_in:
            raise RuntimeError(f"scored {rows} rows of the {rows_in} in {path}")
    return ScoreResult(model_version=version, rows=rows, output=output)
