"""One pipeline run from one config: the data steps (:mod:`.prepare`), Ray Train, the test evaluation and the
registered MLflow model, each step timed and logged under one MLflow run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixrec.features import feast_repo
from mixrec.features.io import write_json_atomic

from .config import PipelineConfig, dataset_schema
from .prepare import check_model_config, prepare_data
from .progress import Mode, StepTimer
from .workspace import Workspace


@dataclass
class PipelineResult:
    workspace: Workspace
    model_name: str
    version: str
    aliases: list[str]
    metrics: dict
    counts: dict
    step_seconds: dict[str, float] = field(default_factory=dict)
    run_id: str = ""


def run_pipeline(cfg: PipelineConfig, fresh: bool = False, progress: Callable[[str], None] = print,
                 ray_address: str | None = None, mode: Mode = "off") -> PipelineResult:
    """``progress`` gets the step lines; ``mode``: how the long steps show their progress inside a step
    (:class:`~mixrec.pipelines.progress.Tracker`: ``bars``, ``lines`` or ``off``)."""
    check_model_config(cfg, dataset_schema(cfg))
    ws = Workspace.resolve(cfg.workspace).create(fresh=fresh)
    timer = StepTimer(progress, mode)
    data = prepare_data(cfg, ws, timer, ray_address)
    schema, preprocessor, prepared, counts = data.schema, data.preprocessor, data.datasets, data.counts

    import mlflow

    from . import lineage, pyfunc, registry, story
    from .train import epoch_line, train

    tracking_uri = registry.setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws,
                                           cfg.registry.lock_uri)
    with mlflow.start_run(run_name=f"pipeline-{cfg.model.name}") as run:
        public = log_config(cfg)
        mlflow.log_dict(data.suite, "validation/suite.json")
        mlflow.log_dict(data.validation_report, "validation/report.json")
        mlflow.log_text(data.validation_summary, "validation/summary.txt")
        mlflow.log_metrics({f"rows_{k}": v for k, v in counts.items()})
        splits = {name: ws.prepared_split(name) for name in ("train", "valid", "test")}
        digests = story.log_dataset_inputs(splits, schema.name)

        with (timer.step("train", f"Ray Train: {cfg.model.name} on {cfg.train.num_workers} worker(s), {cfg.train.epochs} epoch(s)"),
              mlflow.start_run(run_name=f"train-{cfg.model.name}", nested=True) as train_run):
            # One MLflow run per training, nested under the pipeline's run; rank 0 logs its per-epoch metrics.
            log_config(cfg, nested=True)
            story.log_dataset_inputs(splits, schema.name, which=("train", "valid"))
            with timer.tracker("training", cfg.train.epochs, "epochs") as epochs:
                def on_epoch(metrics: dict) -> None:
                    epochs.advance(1, f"valid AUC {metrics['valid_auc']:.4f}", line=epoch_line(metrics, cfg.train.epochs))

                outcome = train(prepared["train"], prepared["valid"], preprocessor, cfg.model.name, cfg.model.kwargs,
                                cfg.train, ws.ray_storage, run_name=f"train-{train_run.info.run_id}",
                                tracking_uri=tracking_uri, mlflow_run_id=train_run.info.run_id,
                                user_key=schema.user_key, on_epoch=None if mode == "off" else on_epoch)
            mlflow.log_artifacts(str(outcome.checkpoint_dir), "best_checkpoint")
            history = story.epoch_history(mlflow.MlflowClient(), train_run.info.run_id)
            story.log_plots(history=history)  # the training run: its curve
            progress(f"    best validation AUC {outcome.metrics['valid_auc']:.4f}, logloss {outcome.metrics['valid_logloss']:.4f}")
        # The pipeline run carries the best epoch's summary; the nested run has the per-epoch history.
        mlflow.log_metrics({k: float(outcome.metrics[k]) for k in ("valid_auc", "valid_logloss", "valid_uauc", "num_nodes")
                            if outcome.metrics[k] == outcome.metrics[k]})  # NaN-free

        with timer.step("register", "MLflow: evaluate on test, log and register the model"):
            from .metrics import binary_metrics

            labels, probs = score_checkpoint(outcome.checkpoint_dir, prepared["test"])
            test_metrics = binary_metrics(labels, probs)
            mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
            story.log_plots(labels, probs, history)
            example = data.example
            registered = pyfunc.log_and_register(
                outcome.checkpoint_dir, example, cfg.registry.model_name,
                tags={"model": cfg.model.name, "feast_feature_service": feast_repo.FEATURE_SERVICE,
                      "test_auc": f"{test_metrics['auc']:.5f}",
                      **lineage.lineage_tags(data.source_files, schema, feast_repo.FEATURE_SERVICE, public)})
            metrics = {**outcome.metrics, **{f"test_{k}": v for k, v in test_metrics.items()}}
            mlflow.MlflowClient().update_model_version(registered.name, registered.version, description=(
                story.version_description(cfg.model.name, schema.name, counts, digests, metrics, run.info.run_id,
                                          story.registration_gate(registered.version, registered.aliases))))
        mlflow.log_metrics({f"step_seconds_{k}": v for k, v in timer.seconds.items()})
        write_json_atomic({"run_id": run.info.run_id, "version": registered.version, "counts": counts,
                           "step_seconds": timer.seconds}, ws.last_run_path)
    return PipelineResult(workspace=ws, model_name=registered.name, version=registered.version,
                          aliases=registered.aliases, metrics=metrics, counts=counts,
                          step_seconds=timer.seconds, run_id=run.info.run_id)


def log_config(cfg: PipelineConfig, nested: bool = False) -> dict:
    """Log the config to the active MLflow run: the pipeline run gets the data params and ``config.json``,
    the nested training run the model and train params. Every ``${NAME}`` secret stays a reference
    (:meth:`PipelineConfig.public_dict`); returns that public dict (the lineage tags take it too)."""
    import mlflow

    public = cfg.public_dict()
    if nested:
        mlflow.log_params({"model.name": cfg.model.name, **{f"model.{k}": v for k, v in public["model"]["kwargs"].items()},
                           **{f"train.{k}": v for k, v in public["train"].items()}})
    else:
        mlflow.log_params({"model.name": cfg.model.name, **{f"data.{k}": v for k, v in public["data"].items()}})
        mlflow.log_dict(public, "config.json")
    return public


def score_checkpoint(checkpoint_dir: Path, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Score a prepared Ray Dataset with a checkpoint on the driver (test split; small by design):
    (labels [n], click probabilities [n])."""
    from .checkpoint import load_checkpoint
    from .metrics import predict

    model, _, _ = load_checkpoint(checkpoint_dir)
    labels, probs, _ = predict(model, dataset, batch_size=4096)
    return labels, probs


def evaluate_checkpoint(checkpoint_dir: Path, dataset) -> dict[str, float]:
    """The test metrics of a checkpoint on a prepared Ray Dataset (see :func:`score_checkpoint`)."""
    from .metrics import binary_metrics

    return binary_metrics(*score_checkpoint(checkpoint_dir, dataset))
