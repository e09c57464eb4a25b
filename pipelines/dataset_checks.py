"""Dataset-level checks on the prepared splits, and the validation report.

Aggregates (one row per split: row count, label rate, per-field share of values outside the train vocabulary)
go through a GX suite: row counts, label-rate drift against train and the unseen-category rate against
train's own. :func:`validation_report` joins them with the row-level counts (:mod:`.validate`) into the report
logged to MLflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mixrec.models.batch import CATEGORICAL, LABEL

from .validate import ValidationResult


def _split_aggregates(batch: dict[str, np.ndarray], starts: list[int]) -> dict[str, np.ndarray]:
    """Per-batch partial aggregates of a prepared split: rows, label sum, OOV count per field (rows whose id
    columns of the field, ``starts`` giving each field's first, are all 0)."""
    cat = batch[CATEGORICAL]
    known = np.logical_or.reduceat(cat != 0, starts, axis=1) if len(cat) else np.zeros((0, len(starts)), bool)
    return {"rows": np.array([len(cat)]), "label_sum": np.array([float(batch[LABEL].sum())]),
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
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from .runtime import is_verbose

    ctx = gx.get_context(mode="ephemeral")
    # GX draws a "Calculating Metrics" bar per validation (carriage returns in a log) unless told not to.
    ctx.variables.progress_bars = ProgressBarsConfig(globally=is_verbose())
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
