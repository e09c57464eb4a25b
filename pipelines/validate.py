"""Great Expectations validation of every batch inside the Ray Data pipeline, with a quarantine.

The suite is derived from the dataset schema plus ranges fitted on the training window: columns present,
label in {0, 1}, ids and features not null, dense values finite and within the fitted range (widened by a
margin). Every row that fails goes to a quarantine Parquet file with the expectation(s) it failed; the counts
reconcile (rows in = accepted + quarantined); above a failure fraction the run stops with a clear error.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.features.schema import DatasetSchema

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

FAILED_COLUMN = "_failed_expectations"


class ValidationFailed(RuntimeError):
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


def build_suite(schema: DatasetSchema, dense_ranges: dict[str, tuple[float, float]], name: str = "mixrec_rows") -> dict:
    """The expectation suite as GX JSON (so it can be shipped to Ray actors and logged as an artifact)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [gxe.ExpectColumnToExist(column=c) for c in schema.required_columns]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c)
                     for c in schema.required_columns if c != schema.timestamp]
    expectations.append(gxe.ExpectColumnValuesToBeInSet(column=schema.label, value_set=[0, 1]))
    for col, (lo, hi) in dense_ranges.items():
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi))
    return gx.ExpectationSuite(name=name, expectations=expectations).to_json_dict()


def _describe(config) -> str:
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


class BatchValidator:
    """A Ray Data callable class: builds the GX context once per actor, validates each pandas batch.

    Returns the batch with a ``_failed_expectations`` column: "" for a good row, else the failed
    expectations joined by "; ".
    """

    def __init__(self, suite_json: dict):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._ctx = gx.get_context(mode="ephemeral")
        self._ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._batch_definition = (self._ctx.data_sources.add_pandas(name="mixrec")
                                  .add_dataframe_asset(name="rows")
                                  .add_batch_definition_whole_dataframe("batch"))
        self._suite = self._ctx.suites.add(gx.ExpectationSuite(**suite_json))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        failures: list[list[str]] = [[] for _ in range(len(batch))]
        if len(batch):
            result = self._batch_definition.get_batch(batch_parameters={"dataframe": batch}).validate(
                self._suite, result_format={"result_format": "COMPLETE"})
            for r in result.results:
                if r.success:
                    continue
                label = _describe(r.expectation_config)
                if r.expectation_config.type == "expect_column_to_exist":
                    rows = range(len(batch))  # a missing column fails every row of the batch
                else:
                    rows = r.result.get("unexpected_index_list") or []
                for i in rows:
                    failures[i].append(label)
        batch[FAILED_COLUMN] = ["; ".join(f) for f in failures]
        return batch


def validate_dataset(ds, suite_json: dict, quarantine_path: Path, max_failure_fraction: float,
                     batch_size: int = 10_000) -> tuple[object, ValidationResult]:
    """Validate a Ray Dataset batch by batch; return (accepted dataset, counts).

    Quarantined rows are written atomically to ``quarantine_path`` (Parquet, with the failed expectations).
    Raises :class:`ValidationFailed` (after writing the quarantine) when too many rows fail.
    """
    from ray.data import ActorPoolStrategy

    # One actor: the GX context is built once and reused for every batch (building it costs ~40 ms).
    checked = ds.map_batches(BatchValidator, fn_constructor_args=(suite_json,), batch_format="pandas",
                             batch_size=batch_size, compute=ActorPoolStrategy(size=1)).materialize()
    rows_in = checked.count()
    bad = checked.filter(expr=f"{FAILED_COLUMN} != ''").to_pandas()
    accepted = checked.filter(expr=f"{FAILED_COLUMN} == ''").drop_columns([FAILED_COLUMN]).materialize()
    failed = bad[FAILED_COLUMN] if len(bad) else []  # an empty result has no columns at all
    counts = Counter(name for joined in failed for name in joined.split("; "))
    result = ValidationResult(rows_in=rows_in, accepted=accepted.count(), quarantined=len(bad),
                              failures_by_expectation=dict(counts))
    if result.accepted + result.quarantined != rows_in:
        raise RuntimeError(f"validation lost rows: {result.summary()}")
    if len(bad):
        quarantine_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = quarantine_path.with_name(f".{quarantine_path.name}.tmp")
        pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), tmp)
        tmp.replace(quarantine_path)
        result.quarantine_path = quarantine_path
    if result.failure_fraction > max_failure_fraction:
        raise ValidationFailed(
            f"{result.quarantined} of {rows_in} rows ({result.failure_fraction:.1%}) failed validation, above "
            f"validate.max_failure_fraction={max_failure_fraction:.1%}; see {quarantine_path}\n{result.summary()}")
    return accepted, result
