"""Great Expectations validation of every batch inside the Ray Data pipeline, with a quarantine.

The row-level suite is derived from the dataset schema plus ranges fitted on the training window: columns
present, label in {0, 1}, keys (and fields declared not nullable, multi-hot lists included: an empty list is
not null) not null, dense values finite and within the fitted range (widened by a margin; lower bound only for log1p counts, whose tail
is unbounded). Column types are enforced before: the adapters cast every column to its schema type at ingest
and fail naming the file and column (GX 1.24's type expectations misreport Ray Data's pyarrow-backed batches).
Every row that fails goes to a quarantine Parquet file with the expectation(s) it failed; the
counts reconcile (rows in = accepted + quarantined); above a failure fraction the run stops with a clear error.

Dataset-level checks run on aggregates (one row per split: row count, label rate, per-field share of values
outside the train vocabulary) through a second GX suite: row counts, label-rate drift against train and the
unseen-category rate against train's own. :func:`validation_report` joins both into the report logged to MLflow.
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

from mixrec.features.multihot import plain_list_columns
from mixrec.features.schema import DatasetSchema

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

FAILED_COLUMN = "_failed_expectations"
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Expectations on a whole column (no per-row result): when they fail, every row of the batch fails.
COLUMN_LEVEL = {"expect_column_to_exist"}


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


def widen_ranges(bounds: dict[str, list[float]], columns: list[str], margin: float) -> dict[str, tuple[float, float]]:
    """:func:`fit_dense_ranges` from precomputed finite (min, max) per column (e.g. gathered while streaming)."""
    missing = [c for c in columns if c not in bounds]
    if missing:
        raise ValueError(f"dense column(s) {missing} have no finite values in the training window")
    return fit_dense_ranges(pd.DataFrame({c: bounds[c] for c in columns}), columns, margin)


def build_suite(schema: DatasetSchema, dense_ranges: dict[str, tuple[float, float]], name: str = "mixrec_rows") -> dict:
    """The expectation suite as GX JSON (so it can be shipped to Ray actors and logged as an artifact)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [gxe.ExpectColumnToExist(column=c) for c in schema.required_columns]
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
                if r.expectation_config.type in COLUMN_LEVEL:
                    rows = range(len(batch))  # a missing or mistyped column fails every row of the batch
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
        pq.write_table(pa.Table.from_pandas(plain_list_columns(bad), preserve_index=False), tmp)
        tmp.replace(quarantine_path)
        result.quarantine_path = quarantine_path
    if result.failure_fraction > max_failure_fraction:
        raise ValidationFailed(
            f"{result.quarantined} of {rows_in} rows ({result.failure_fraction:.1%}) failed validation, above "
            f"validate.max_failure_fraction={max_failure_fraction:.1%}; see {quarantine_path}\n{result.summary()}")
    return accepted, result


# --- dataset level --------------------------------------------------------------------------------------
def _split_aggregates(batch: dict[str, np.ndarray], starts: list[int]) -> dict[str, np.ndarray]:
    """Per-batch partial aggregates of a prepared split: rows, label sum, OOV count per field (rows whose id
    columns of the field, ``starts`` giving each field's first, are all 0)."""
    cat = batch["categorical"]
    known = np.logical_or.reduceat(cat != 0, starts, axis=1) if len(cat) else np.zeros((0, len(starts)), bool)
    return {"rows": np.array([len(cat)]), "label_sum": np.array([float(batch["label"].sum())]),
            "oov": (~known).sum(axis=0, keepdims=True)}


def split_aggregates(prepared: dict, categorical: list[str], bag_sizes: tuple[int, ...] = ()) -> pd.DataFrame:
    """One row per split: rows, label_rate, unseen_rate_<field> (share of rows whose value maps to OOV:
    unseen in train, rare or missing; for a multi-hot field, rows none of whose values is known, with
    ``bag_sizes`` its id columns). A streaming reduction; only per-batch partials reach the driver."""
    starts = np.cumsum((0, *(bag_sizes or (1,) * len(categorical))))[:-1].tolist()
    rows = []
    for split, ds in prepared.items():
        parts = ds.map_batches(_split_aggregates, fn_kwargs={"starts": starts}, batch_format="numpy").take_all()
        n = sum(int(p["rows"]) for p in parts)
        oov = np.sum([p["oov"] for p in parts], axis=0) if parts else np.zeros(len(categorical))
        row = {"split": split, "rows": n, "label_rate": sum(p["label_sum"] for p in parts) / max(n, 1)}
        row.update({f"unseen_rate_{f}": float(oov[j]) / max(n, 1) for j, f in enumerate(categorical)})
        rows.append(row)
    return pd.DataFrame(rows)


def check_dataset(aggregates: pd.DataFrame, min_rows: int, max_label_rate_drift: float,
                  max_unseen_rate_increase: float) -> dict:
    """Dataset-level GX suite on the per-split aggregates (train is the reference, so its own row passes the
    drift checks by construction); returns the GX result as JSON (``success``, ``expectations``)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    train = aggregates.set_index("split").loc["train"]
    rate = float(train["label_rate"])
    expectations = [gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=min_rows),
                    gxe.ExpectColumnValuesToBeBetween(column="label_rate", min_value=rate - max_label_rate_drift,
                                                      max_value=rate + max_label_rate_drift)]
    expectations += [gxe.ExpectColumnValuesToBeBetween(column=c, max_value=float(train[c]) + max_unseen_rate_increase)
                     for c in aggregates.columns if c.startswith("unseen_rate_")]
    ctx = gx.get_context(mode="ephemeral")
    batch = (ctx.data_sources.add_pandas(name="aggregates").add_dataframe_asset(name="splits")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": aggregates}))
    suite = ctx.suites.add(gx.ExpectationSuite(name="mixrec_dataset", expectations=expectations))
    return batch.validate(suite, result_format={"result_format": "SUMMARY"}).describe_dict()


def _failed(report: dict) -> list[str]:
    """``expectation(column)`` of each failed dataset-level expectation."""
    return [f"{e['expectation_type']}({e.get('kwargs', {}).get('column', '')})"
            for e in report.get("expectations", []) if not e.get("success", True)]


def validation_report(rows: ValidationResult, aggregates: pd.DataFrame, dataset_result: dict,
                      retrieval: dict) -> tuple[dict, str]:
    """The validation report (JSON, logged to MLflow) and its short human summary."""
    failed = _failed(dataset_result)
    lines = [f"retrieval: {retrieval['events']} events = joined {retrieval['joined']} "
             f"+ quarantined by the point-in-time join {retrieval['dropped']}",
             f"row level: {rows.summary()}",
             "dataset level: " + ("passed" if dataset_result["success"] else "FAILED " + ", ".join(failed))]
    for r in aggregates.to_dict("records"):
        unseen = {k[len("unseen_rate_"):]: v for k, v in r.items() if k.startswith("unseen_rate_")}
        worst = max(unseen, key=unseen.get) if unseen else None
        lines.append(f"  {r['split']}: {r['rows']} rows, label rate {r['label_rate']:.4f}"
                     + (f", highest unseen rate {worst} {unseen[worst]:.3f}" if worst else ""))
    report = {"retrieval": retrieval,
              "row_level": {"rows_in": rows.rows_in, "accepted": rows.accepted, "quarantined": rows.quarantined,
                            "failures_by_expectation": rows.failures_by_expectation,
                            "quarantine_path": str(rows.quarantine_path) if rows.quarantine_path else None},
              "dataset_level": {"aggregates": aggregates.to_dict("records"), "gx_result": dataset_result,
                                "failed": failed},
              "success": bool(dataset_result["success"])}
    return report, "\n".join(lines)
