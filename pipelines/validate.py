"""Great Expectations validation of every batch inside the Ray Data pipeline, with a quarantine.

The row-level suite is derived from the dataset schema plus ranges fitted on the training window: columns
present and of the type they have in the training window (e.g. a dense column that arrives as text), label in
{0, 1}, keys (and fields declared not nullable, multi-hot lists included: an empty list is not null) not null,
dense values finite and within the fitted range (widened by a margin; lower bound only for log1p counts, whose
tail is unbounded). The adapters cast every column to its schema type at ingest too, and fail there naming the
file and column. Every row that fails goes to a quarantine Parquet file with the expectation(s) it failed; the
counts reconcile (rows in = accepted + quarantined); above a failure fraction the run stops with a clear error.

Dataset-level checks (on aggregates of the prepared splits) are :mod:`.dataset_checks`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mixrec.features.io import write_dataset_atomic, write_tables_atomic
from mixrec.features.schema import DatasetSchema

from .errors import RunFailed
from .runtime import RAY_ACTOR_ARGS_WARNING, drop_stderr_lines

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

FAILED_COLUMN = "_failed_expectations"
RAW_COLUMN = "_raw_row"  # a quarantined row as it arrived (JSON), whatever its types
TYPE_EXPECTATIONS = ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class ValidationFailed(RunFailed):
    """More rows failed validation than the configured fraction allows."""


@dataclass
class ValidationResult:
    rows_in: int
    accepted: int
    quarantined: int
    failures_by_expectation: dict[str, int] = field(default_factory=dict)
    quarantine_path: Path | None = None

    @property
    def failure_fraction(self) -> float:
        return self.quarantined / self.rows_in if self.rows_in else 0.0

    def summary(self) -> str:
        lines = [f"rows in {self.rows_in} = accepted {self.accepted} + quarantined {self.quarantined}"]
        lines += [f"  {name}: {count} rows" for name, count in sorted(self.failures_by_expectation.items())]
        return "\n".join(lines)


def fit_dense_ranges(table: pa.Table | pd.DataFrame, columns: list[str], margin: float) -> dict[str, tuple[float, float]]:
    """Min/max of the finite values of each dense column, widened by ``margin`` x span on both sides."""
    ranges = {}
    for col in columns:
        values = np.asarray(table[col], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"dense column {col!r} has no finite values in the training window")
        lo, hi = float(values.min()), float(values.max())
        pad = margin * max(hi - lo, 1e-6)
        ranges[col] = (lo - pad, hi + pad)
    return ranges


def widen_ranges(bounds: dict[str, list[float]], columns: list[str], margin: float) -> dict[str, tuple[float, float]]:
    """:func:`fit_dense_ranges` from precomputed finite (min, max) per column (e.g. gathered while streaming)."""
    missing = [c for c in columns if c not in bounds]
    if missing:
        raise ValueError(f"dense column(s) {missing} have no finite values in the training window")
    return fit_dense_ranges(pd.DataFrame({c: bounds[c] for c in columns}), columns, margin)


def column_types(arrow_schema: pa.Schema, columns) -> dict[str, list[str]]:
    """The GX type list of each column, from the Arrow schema of the reference (training-window) data, as
    pandas sees it in a Ray Data batch. Integers also accept float64: pandas upcasts an integer column with a
    null (the not-null expectations judge the null itself). A timestamp is checked as ``Timestamp``; list
    columns (multi-hot) are not type-checked."""
    types = {}
    for name in columns:
        if name not in arrow_schema.names:
            continue
        t = arrow_schema.field(name).type
        if pa.types.is_integer(t):  # "int": the value check of an object column sees Python ints
            types[name] = [str(np.dtype(t.to_pandas_dtype())), "float64", "int"]
        elif pa.types.is_floating(t):
            types[name] = ["float32", "float64", "float", "int"]
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            types[name] = ["str"]
        elif pa.types.is_boolean(t):
            types[name] = ["bool"]
        elif pa.types.is_timestamp(t):
            types[name] = ["Timestamp"]
    return types


def build_suite(schema: DatasetSchema, dense_ranges: dict[str, tuple[float, float]],
                types: dict[str, list[str]] | None = None, name: str = "mixrec_rows") -> dict:
    """The expectation suite as GX JSON (so it can be shipped to Ray actors and logged as an artifact):
    columns present and of their reference type (:func:`column_types`), keys and non-nullable fields not
    null, label in {0, 1}, dense values within the fitted ranges."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [gxe.ExpectColumnToExist(column=c) for c in schema.required_columns]
    for col, type_list in (types or {}).items():
        expectations.append(gxe.ExpectColumnValuesToBeOfType(column=col, type_=type_list[0]) if len(type_list) == 1
                            else gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=type_list))
    not_null = [*schema.keys, schema.label, *(f.name for f in schema.fields if not f.nullable)]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in dict.fromkeys(not_null)]
    expectations.append(gxe.ExpectColumnValuesToBeInSet(column=schema.label, value_set=[0, 1]))
    log1p = {f.name for f in schema.dense if f.log1p}
    for col, (lo, hi) in dense_ranges.items():
        # Counts are heavy-tailed: no fitted upper bound (log1p + clipping handle the tail), only finiteness.
        hi = FLOAT32_MAX if col in log1p else hi
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi))
    return gx.ExpectationSuite(name=name, expectations=expectations).to_json_dict()


def _describe(config) -> str:
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


class BatchValidator:
    """A Ray Data callable class: builds the GX context once per actor, validates each pandas batch.

    Returns the batch with a ``_failed_expectations`` column ("" for a good row, else the failed
    expectations joined by "; ") and a ``_raw_row`` column (the row as it arrived, as JSON, for failed rows;
    "" else). Columns with a type expectation are then coerced to their reference type (a value that does not
    fit becomes null; its row has failed and keeps the value in ``_raw_row``), so every written block has the
    same Arrow schema and nothing of a quarantined row is lost.
    """

    def __init__(self, suite_json: dict, progress_queue=None):
        """``progress_queue``: a :func:`~mixrec.pipelines.progress.relay` queue that gets each batch's row count."""
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._ctx = gx.get_context(mode="ephemeral")
        self._ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._batch_definition = (self._ctx.data_sources.add_pandas(name="mixrec")
                                  .add_dataframe_asset(name="rows")
                                  .add_batch_definition_whole_dataframe("batch"))
        self._suite = self._ctx.suites.add(gx.ExpectationSuite(**suite_json))
        self._types = {e["kwargs"]["column"]: e["kwargs"].get("type_list") or [e["kwargs"]["type_"]]
                       for e in suite_json["expectations"] if e["type"] in TYPE_EXPECTATIONS}
        self._progress = progress_queue

    def __call__(self, table: pa.Table) -> pa.Table:
        # GX judges types on numpy-backed columns: Ray Data's own pandas batches are pyarrow-backed
        # (int64[pyarrow], ...), on which GX 1.24's type expectations fail for every value.
        batch = table.to_pandas()
        failed = np.full(len(batch), "", dtype=object)
        if len(batch):
            result = self._batch_definition.get_batch(batch_parameters={"dataframe": batch}).validate(
                self._suite, result_format={"result_format": "COMPLETE"})
            for r in result.results:
                if r.success:
                    continue
                label = _describe(r.expectation_config)
                rows = r.result.get("unexpected_index_list")
                # None: a column-level outcome (a missing column, a column whose dtype is wrong as a whole), so
                # every row of the batch fails. Object columns are type-checked value by value, row by row.
                rows = np.arange(len(batch)) if rows is None else np.asarray(rows, dtype=np.int64)
                previous = failed[rows]
                failed[rows] = np.where(previous == "", label, previous + "; " + label)
        bad = failed != ""
        raw = np.full(len(batch), "", dtype=object)
        if bad.any():
            raw[bad] = batch[bad].to_json(orient="records", lines=True, date_format="iso",
                                          default_handler=str).splitlines()
        # Arrow out: untouched columns (list columns included) pass through as they came.
        for col, types in self._types.items():
            if col in batch.columns and _dtype_name(batch[col]) not in types:
                i = table.schema.get_field_index(col)
                table = table.set_column(i, col, pa.Array.from_pandas(_coerce(batch[col], types[0])))
        if self._progress is not None:
            self._progress.put_nowait(len(batch))
        return (table.append_column(FAILED_COLUMN, pa.array(failed.astype(str), pa.string()))
                .append_column(RAW_COLUMN, pa.array(raw.astype(str), pa.string())))


def _dtype_name(values: pd.Series) -> str:
    return "Timestamp" if isinstance(values.dtype, pd.DatetimeTZDtype) else str(values.dtype)


def _coerce(values: pd.Series, type_name: str) -> pd.Series:
    """A column as its reference type; values that do not fit become null."""
    if type_name.startswith(("int", "uint")):
        x = pd.to_numeric(values, errors="coerce")
        return x.where(x == np.round(x)).astype("Int64")  # non-integral values -> null
    if type_name.startswith("float"):
        return pd.to_numeric(values, errors="coerce").astype(type_name)
    if type_name == "str":
        return values.astype("string")
    return values


def _failure_counts(batch: pd.DataFrame) -> pd.DataFrame:
    """Per-batch row count of each distinct ``_failed_expectations`` value ("" = accepted)."""
    vc = batch[FAILED_COLUMN].value_counts()
    return pd.DataFrame({"failed": vc.index.astype(str), "rows": vc.to_numpy(np.int64)})


def validate_dataset(ds, suite_json: dict, quarantine_path: Path, max_failure_fraction: float,
                     batch_size: int = 50_000, validated_dir: Path | None = None,
                     progress_queue=None) -> tuple[object, ValidationResult]:
    """Validate a Ray Dataset batch by batch, streaming; return (accepted dataset, counts).

    The checked rows stream to Parquet in ``validated_dir`` (default: ``validated`` beside the quarantine)
    instead of the object store, so memory does not grow with the dataset; the accepted dataset is a lazy
    read of it. Quarantined rows are written atomically to ``quarantine_path`` (one Parquet file, with the
    failed expectations), a batch at a time. Raises :class:`ValidationFailed` (after writing the quarantine)
    when too many rows fail. ``progress_queue``: see :class:`BatchValidator`.
    """
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    validated_dir = validated_dir or quarantine_path.parent / "validated"
    # One actor: the GX context is built once and reused for every batch (building it costs ~40 ms).
    checked = ds.map_batches(BatchValidator, fn_constructor_args=(suite_json, progress_queue), batch_format="pyarrow",
                             batch_size=batch_size, compute=ActorPoolStrategy(size=1))
    with drop_stderr_lines(RAY_ACTOR_ARGS_WARNING):  # the actor pool starts here
        write_dataset_atomic(checked, validated_dir)
    validated = ray.data.read_parquet(str(validated_dir))
    # Counts per distinct failure string: a few rows per block reach the driver, never the rows themselves.
    tally = (validated.select_columns([FAILED_COLUMN])
             .map_batches(_failure_counts, batch_format="pandas").to_pandas())
    by_failure = tally.groupby("failed")["rows"].sum() if len(tally) else pd.Series(dtype=np.int64)
    rows_in = int(by_failure.sum())
    accepted_rows = int(by_failure.get("", 0))
    counts = Counter()
    for joined, n in by_failure.items():
        for name in joined.split("; ") if joined else ():
            counts[name] += int(n)
    quarantined = _write_quarantine(validated.filter(expr=col(FAILED_COLUMN) != ""), quarantine_path)
    accepted = validated.filter(expr=col(FAILED_COLUMN) == "").drop_columns([FAILED_COLUMN, RAW_COLUMN])
    result = ValidationResult(rows_in=rows_in, accepted=accepted_rows, quarantined=quarantined,
                              failures_by_expectation=dict(counts),
                              quarantine_path=quarantine_path if quarantined else None)
    if result.accepted + result.quarantined != rows_in:
        raise RuntimeError(f"validation lost rows: {result.summary()}")
    if result.failure_fraction > max_failure_fraction:
        raise ValidationFailed(
            f"{result.quarantined} of {rows_in} rows ({result.failure_fraction:.1%}) failed validation, above "
            f"validate.max_failure_fraction={max_failure_fraction:.1%}; see {quarantine_path}\n{result.summary()}")
    return accepted, result


def _write_quarantine(bad, path: Path) -> int:
    """Stream the failed rows into one Parquet file (written beside ``path``, renamed when complete)."""
    return write_tables_atomic(bad.iter_batches(batch_format="pyarrow", batch_size=None), path)
