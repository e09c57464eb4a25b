"""What a pipeline run shows in the MLflow UI besides metrics: the train/valid/test Parquet as dataset inputs
(``mlflow.log_input``: source, digest, schema, rows), the ROC, calibration and training-curve figures, and the
registered version's description (data, metrics, gate result), whose gate line the promotion gate rewrites.

Needs an active MLflow run where it logs; no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .lineage import file_digest

SPLIT_CONTEXTS = {"train": "training", "valid": "validation", "test": "testing"}
CURVE_METRICS = ("train_loss", "valid_logloss", "valid_auc")
GATE_PREFIX = "**Gate:**"
DIGEST_CHARS = 32  # MLflow stores dataset digests in 36 characters


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or a folder's Parquet files in name order (how Ray Data writes a split)."""
    path = Path(path)
    return [path] if path.is_file() else sorted(path.glob("*.parquet"))


_MLFLOW_TYPES = {"int64": "long", "int32": "integer", "float": "float", "double": "double", "string": "string",
                 "large_string": "string", "bool": "boolean"}


def mlflow_schema(schema: pa.Schema):
    """The Arrow schema as an MLflow schema (list columns as arrays); None when a type has no MLflow match."""
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    cols = []
    for f in schema:
        # Ray Data writes array columns as its tensor extension type (with Ray imported, it is read back as one).
        arrow = f.type.storage_type if isinstance(f.type, pa.ExtensionType) else f.type
        is_list = pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow)
        name = _MLFLOW_TYPES.get(str(arrow.value_type if is_list else arrow))
        if name is None:
            return None
        dtype = DataType[name]
        cols.append(ColSpec(Array(dtype) if is_list else dtype, f.name))
    return Schema(cols)


def split_dataset(path: Path, name: str):
    """(MLflow dataset of the Parquet at ``path``: local source, sha256 digest of its bytes, schema; rows)."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"no Parquet files at {path}")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    # MLflow's local-file source (its class is generated at import, so it is looked up by its type name).
    source = get_dataset_source_from_json(json.dumps({"uri": str(Path(path).resolve())}), "local")
    dataset = MetaDataset(source, name=name,
                          digest=file_digest(files)[:DIGEST_CHARS], schema=mlflow_schema(pq.read_schema(files[0])))
    return dataset, rows


def log_dataset_inputs(splits: dict[str, Path], dataset_name: str, which: tuple[str, ...] = tuple(SPLIT_CONTEXTS)
                       ) -> dict[str, str]:
    """``mlflow.log_input`` each split of ``which`` in the active run (context training / validation /
    testing, a ``rows`` tag); returns split -> digest."""
    import mlflow

    digests = {}
    for split in which:
        dataset, rows = split_dataset(splits[split], f"{dataset_name}-{split}")
        mlflow.log_input(dataset, context=SPLIT_CONTEXTS[split], tags={"rows": str(rows), "split": split})
        digests[split] = dataset.digest
    return digests


def epoch_history(client, run_id: str, names: tuple[str, ...] = CURVE_METRICS) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch (step, value) pairs of ``names`` logged in ``run_id`` (rank 0 logs them at each epoch's end)."""
    return {n: [(m.step, m.value) for m in client.get_metric_history(run_id, n)] for n in names}


def log_plots(labels: np.ndarray | None = None, probs: np.ndarray | None = None, history: dict | None = None,
              prefix: str = "plots") -> list[str]:
    """ROC and calibration of the test scores (labels, probs: [n]; both classes needed) and, given ``history``
    (see :func:`epoch_history`), the training curve, as PNG figures of the active run; returns their paths."""
    import matplotlib.pyplot as plt
    import mlflow

    from .plots import calibration_figure, roc_figure, training_curve_figure

    figures = {}
    if labels is not None and 0 < labels.sum() < len(labels):
        figures["roc.png"] = roc_figure(labels, probs)
        figures["calibration.png"] = calibration_figure(labels, probs)
    if history and any(history.values()):
        figures["training_curve.png"] = training_curve_figure(history)
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{prefix}/{name}")
        plt.close(fig)
    return [f"{prefix}/{name}" for name in figures]


def version_description(model: str, dataset_name: str, counts: dict, digests: dict[str, str], metrics: dict,
                        run_id: str, gate: str) -> str:
    """The registered version's description (Markdown, shown by the MLflow UI): what data, which metrics, which
    gate result (:func:`gate_line`)."""
    rows = ", ".join(f"{s} {counts.get(f'{s}_rows', 0):,}" for s in SPLIT_CONTEXTS)
    return "\n\n".join([
        f"**{model}** trained by mixrec pipeline run `{run_id}` on dataset `{dataset_name}`.",
        f"**Data:** {rows} rows (of {counts.get('events', 0):,} events; {counts.get('quarantined', 0):,} "
        f"quarantined by validation, {counts.get('feast_dropped', 0):,} dropped by the point-in-time join); "
        "digests " + ", ".join(f"{s} `{d[:12]}`" for s, d in digests.items()) + ".",
        f"**Metrics:** test AUC {metrics['test_auc']:.4f}, logloss {metrics['test_logloss']:.4f}; "
        f"best validation AUC {metrics['valid_auc']:.4f} (epoch {int(metrics.get('epoch', 0)) + 1}).",
        f"{GATE_PREFIX} {gate}",
    ])


def registration_gate(version: str, aliases: list[str]) -> str:
    """The gate line of a new version: the first is champion without a gate, a later one awaits `promote`."""
    if "champion" in aliases:
        return "none: the first version of the model is champion by default."
    return f"not evaluated yet: `mixrec promote {version}` runs the offline gate against the champion."


def set_gate_line(client, model_name: str, version: str, gate: str) -> None:
    """Replace the gate line of a version's description (append one when it has none)."""
    description = client.get_model_version(model_name, version).description or ""
    kept = [p for p in description.split("\n\n") if p and not p.startswith(GATE_PREFIX)]
    client.update_model_version(model_name, version, description="\n\n".join([*kept, f"{GATE_PREFIX} {gate}"]))
