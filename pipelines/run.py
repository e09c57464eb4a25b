"""One pipeline run from one config: the data steps (:mod:`.prepare`), Ray Train, the test evaluation and the
registered MLflow model, each step timed and logged under one MLflow run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mixrec.features import feast_repo
from mixrec.features.io import write_json_atomic

from .config import PipelineConfig, dataset_schema
from .prepare import check_model_config, prepare_data
from .progress import StepTimer
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
                 ray_address: str | None = None) -> PipelineResult:
    check_model_config(cfg, dataset_schema(cfg))
    ws = Workspace.resolve(cfg.workspace).create(fresh=fresh)
    timer = StepTimer(progress)
    data = prepare_data(cfg, ws, timer, ray_address)
    schema, preprocessor, prepared, counts = data.schema, data.preprocessor, data.datasets, data.counts

    import mlflow

    from . import lineage, pyfunc, registry
    from .train import train

    tracking_uri = registry.setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws,
                                           cfg.registry.lock_uri)
    with mlflow.start_run(run_name=f"pipeline-{cfg.model.name}") as run:
        mlflow.log_params({"model.name": cfg.model.name, **{f"data.{k}": v for k, v in cfg.data.model_dump().items()}})
        mlflow.log_dict(cfg.to_dict(), "config.json")
        mlflow.log_dict(data.suite, "validation/suite.json")
        mlflow.log_dict(data.validation_report, "validation/report.json")
        mlflow.log_text(data.validation_summary, "validation/summary.txt")
        mlflow.log_metrics({f"rows_{k}": v for k, v in counts.items()})

        with (timer.step("train", f"Ray Train: {cfg.model.name} on {cfg.train.num_workers} worker(s), {cfg.train.epochs} epoch(s)"),
              mlflow.start_run(run_name=f"train-{cfg.model.name}", nested=True) as train_run):
            # One MLflow run per training, nested under the pipeline's run; rank 0 logs its per-epoch metrics.
            mlflow.log_params({"model.name": cfg.model.name, **{f"model.{k}": v for k, v in cfg.model.kwargs.items()},
                               **{f"train.{k}": v for k, v in cfg.train.model_dump().items()}})
            outcome = train(prepared["train"], prepared["valid"], preprocessor, cfg.model.name, cfg.model.kwargs,
                            cfg.train, ws.ray_storage, run_name=f"train-{train_run.info.run_id}",
                            tracking_uri=tracking_uri, mlflow_run_id=train_run.info.run_id, user_key=schema.user_key)
            mlflow.log_artifacts(str(outcome.checkpoint_dir), "best_checkpoint")
            progress(f"    best validation AUC {outcome.metrics['valid_auc']:.4f}, logloss {outcome.metrics['valid_logloss']:.4f}")
        # The pipeline run carries the best epoch's summary; the nested run has the per-epoch history.
        mlflow.log_metrics({k: float(outcome.metrics[k]) for k in ("valid_auc", "valid_logloss", "valid_uauc", "num_nodes")
                            if outcome.metrics[k] == outcome.metrics[k]})  # NaN-free

        with timer.step("register", "MLflow: evaluate on test, log and register the model"):
            test_metrics = evaluate_checkpoint(outcome.checkpoint_dir, prepared["test"])
            mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
            example = data.example
            registered = pyfunc.log_and_register(
                outcome.checkpoint_dir, example, cfg.registry.model_name,
                tags={"model": cfg.model.name, "feast_feature_service": feast_repo.FEATURE_SERVICE,
                      "test_auc": f"{test_metrics['auc']:.5f}",
                      **lineage.lineage_tags(data.source_files, schema, feast_repo.FEATURE_SERVICE, cfg.to_dict())})
        mlflow.log_metrics({f"step_seconds_{k}": v for k, v in timer.seconds.items()})
        write_json_atomic({"run_id": run.info.run_id, "version": registered.version, "counts": counts,
                           "step_seconds": timer.seconds}, ws.last_run_path)
    metrics = {**outcome.metrics, **{f"test_{k}": v for k, v in test_metrics.items()}}
    return PipelineResult(workspace=ws, model_name=registered.name, version=registered.version,
                          aliases=registered.aliases, metrics=metrics, counts=counts,
                          step_seconds=timer.seconds, run_id=run.info.run_id)


def evaluate_checkpoint(checkpoint_dir: Path, dataset) -> dict[str, float]:
    """Score a prepared Ray Dataset with a checkpoint on the driver (test split; small by design)."""
    from .checkpoint import load_checkpoint
    from .metrics import binary_metrics, predict

    model, _, _ = load_checkpoint(checkpoint_dir)
    labels, probs, _ = predict(model, dataset, batch_size=4096)
    return binary_metrics(labels, probs)
