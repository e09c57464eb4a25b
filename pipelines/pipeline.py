"""The pipeline: generate (or read a dataset from its schema file) -> Feast (apply, point-in-time retrieval, materialize) -> Ray Data + Great Expectations
-> preprocess -> Ray Train -> MLflow registry. One function per step, run from one config."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mixrec.features import adapters, feast_repo
from mixrec.features.adapters import SourceInfo
from mixrec.features.dataset import SPLIT_COLUMN
from mixrec.features.multihot import plain_list_columns
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema
from mixrec.features.splits import split_by_time, time_cuts
from mixrec.features.synthetic import generate, write_sources

from .config import ConfigError, PipelineConfig, data_root, dataset_schema, dataset_spec
from .ingest import retrieve_to_shards
from mixrec.features.io import write_dataset_atomic, write_json_atomic
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


class StepTimer:
    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, what: str):
        self.progress(f"[{len(self.seconds) + 1}] {what} ...")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.progress(f"    done in {self.seconds[name]:.1f}s")


def feast_settings(cfg: PipelineConfig, ws: Workspace) -> tuple[str | dict, dict]:
    registry = cfg.features.registry or str(ws.feast_registry)
    online = cfg.features.online_store or {"type": "sqlite", "path": str(ws.online_store_db)}
    return registry, online


def setup_feature_store(cfg: PipelineConfig, ws: Workspace, schema: DatasetSchema, sources: dict[str, Path]):
    registry, online = feast_settings(cfg, ws)
    feast_repo.write_repo_config(ws.feast_repo, cfg.features.project, registry, online, cfg.features.offline_store)
    store = feast_repo.open_store(ws.feast_repo)
    feast_repo.apply(store, feast_repo.build_definitions(schema, sources, cfg.features.ttl_days))
    return store


def check_model_config(cfg: PipelineConfig, schema: DatasetSchema = SYNTHETIC_SCHEMA) -> None:
    """Build the configured model on a schema-shaped layout: a bad name or keyword fails in a second, before
    any data is generated or shipped, with the model's own message (which names the parameter)."""
    from mixrec.models import FeatureLayout, build_model

    layout = FeatureLayout(cardinalities=(2,) * len(schema.categorical), n_dense=len(schema.dense))
    try:
        build_model(cfg.model.name, layout, **cfg.model.kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid model config (model.name={cfg.model.name!r}): {err}") from None


@dataclass
class PreparedData:
    """What the data steps hand to training: preprocessed, materialized Ray Datasets per split."""

    workspace: Workspace
    schema: DatasetSchema
    preprocessor: object  # Preprocessor
    datasets: dict  # split -> Ray Dataset with categorical, dense, label
    counts: dict
    suite: dict
    validation_summary: str
    validation_report: dict = field(default_factory=dict)
    example: pd.DataFrame | None = None  # a few raw model rows (the registered model's input example)
    source_files: list[Path] = field(default_factory=list)  # the canonical Parquet sources (lineage digest)


def write_synthetic_sources(cfg: PipelineConfig, ws: Workspace) -> SourceInfo:
    """Generate the synthetic tables; the events carry their time-based split (preprocess fractions)."""
    d = cfg.data
    tables = generate(d.num_events, d.num_users, d.num_items, d.days, d.seed)
    ts = pd.DatetimeIndex(tables.events["event_timestamp"]).asi8
    cuts = time_cuts(ts, cfg.preprocess.valid_fraction, cfg.preprocess.test_fraction)
    tables.events[SPLIT_COLUMN] = split_by_time(ts, cuts)
    paths = write_sources(tables, ws.sources_dir)
    return SourceInfo(events=paths["events"], entities={"user": paths["users"], "item": paths["items"]},
                      rows=len(tables.events), min_time=tables.users["event_timestamp"].min(),
                      max_time=tables.events["event_timestamp"].max())


def load_sources(cfg: PipelineConfig, ws: Workspace, timer: StepTimer) -> tuple[DatasetSchema, SourceInfo]:
    """Synthetic data, or the files of the config's dataset schema, as canonical Parquet sources."""
    spec = dataset_spec(cfg)
    if spec is None:
        d = cfg.data
        with timer.step("generate", f"generate {d.num_events:,} synthetic events ({d.num_users:,} users, {d.num_items:,} items)"):
            return SYNTHETIC_SCHEMA, write_synthetic_sources(cfg, ws)
    root = data_root(cfg)
    with timer.step("ingest", f"read dataset {spec.name!r} ({spec.format}, {len(spec.files)} file(s) under {root})"):
        info = adapters.write_sources(spec, root, ws.sources_dir, cfg.data.max_rows)
        timer.progress(f"    {info.rows:,} rows: " + ", ".join(f"{k} {v:,}" for k, v in sorted(info.split_rows.items())))
    return spec.to_schema(), info


def prepare_data(cfg: PipelineConfig, ws: Workspace, timer: StepTimer, ray_address: str | None = None) -> PreparedData:
    """sources -> Feast (apply, chunked point-in-time retrieval, materialize) -> Ray Data + GX -> preprocess
    -> dataset-level checks. Streaming: the driver holds one retrieval chunk and per-batch partials."""
    from .runtime import init_ray

    progress = timer.progress
    schema, info = load_sources(cfg, ws, timer)

    with timer.step("ray_init", "start Ray"):
        ray = init_ray(ray_address)  # init_ray imports ray.data too

    with timer.step("feast", "Feast: apply the feature repo, point-in-time retrieval, materialize"):
        f = cfg.features
        store = setup_feature_store(cfg, ws, schema, {"row": info.events, **info.entities})
        retrieval = retrieve_to_shards(ws.feast_repo, info.events, schema, ws.retrieved_dir,
                                       ws.quarantine_dir / "feast_dropped.parquet", f.retrieval_chunk_rows,
                                       f.retrieval_parallelism)
        start = info.min_time - pd.Timedelta(days=f.ttl_days)
        feast_repo.materialize(store, start.to_pydatetime(), info.max_time.to_pydatetime(),
                               tuple(s for s in schema.entity_sources if s != "row"), ws.materialized_marker)

    from ray.data.expressions import col

    from . import validate
    from .preprocess import fit_preprocessor

    with timer.step("validate", "Ray Data + Great Expectations: validate every batch, quarantine bad rows"):
        rows = ray.data.read_parquet(str(ws.retrieved_dir))
        ranges = validate.widen_ranges(retrieval.train_bounds, [f.name for f in schema.dense],
                                       cfg.validate_.range_margin)
        # Types as the rows come out of retrieval (adapters cast to the schema, Feast keeps their types).
        reference = pq.read_schema(min(ws.retrieved_dir.glob("*.parquet")))
        suite = validate.build_suite(schema, ranges, validate.column_types(reference, schema.required_columns))
        accepted, vresult = validate.validate_dataset(
            rows, suite, ws.quarantine_dir / "validation.parquet",
            cfg.validate_.max_failure_fraction, cfg.validate_.batch_size, validated_dir=ws.validated_dir)
        if vresult.rows_in != retrieval.joined:
            raise RuntimeError(f"validation saw {vresult.rows_in} rows of the {retrieval.joined} retrieved")
        counts = {"events": info.rows, "feast_dropped": retrieval.dropped, "validated": vresult.rows_in,
                  "accepted": vresult.accepted, "quarantined": vresult.quarantined}
        progress(f"    {vresult.summary()}; dropped by the point-in-time join: {retrieval.dropped}")

    with timer.step("preprocess", "preprocess: fit vocabularies and dense stats on train, apply to all splits"):
        p = cfg.preprocess
        splits = {name: accepted.filter(expr=col(SPLIT_COLUMN) == name) for name in ("train", "valid", "test")}
        preprocessor = fit_preprocessor(splits["train"], schema, p.min_count, p.clip_sigma, p.hash_above, p.hash_buckets)
        preprocessor.save(ws.artifacts_dir)
        # Each split streams through the transform to Parquet on disk (not the object store): memory stays flat
        # as the data grows, and training reads the prepared rows lazily, epoch by epoch.
        prepared = {}
        for name, ds in splits.items():
            write_dataset_atomic(ds.map_batches(preprocessor.transform_batch, batch_format="pandas"),
                                 ws.prepared_dir / name)
            prepared[name] = ray.data.read_parquet(str(ws.prepared_dir / name))
        # Raw held-out rows (what a registered pyfunc takes): `mixrec promote` scores champion and challenger
        # on them, each through its own preprocessing.
        write_dataset_atomic(splits["test"].select_columns([*schema.model_columns, schema.label]), ws.holdout_path)

    with timer.step("dataset_checks", "Great Expectations on aggregates: row counts, label-rate and unseen-value drift"):
        v = cfg.validate_
        aggregates = validate.split_aggregates(prepared, preprocessor.categorical, preprocessor.bag_sizes)
        counts.update({f"{r['split']}_rows": int(r["rows"]) for r in aggregates.to_dict("records")})
        result = validate.check_dataset(aggregates, v.min_rows, v.max_label_rate_drift, v.max_unseen_rate_increase)
        report, summary = validate.validation_report(vresult, aggregates, result, asdict(retrieval))
        write_json_atomic(report, ws.artifacts_dir / "validation_report.json")
        progress("    " + summary.replace("\n", "\n    "))
        if not report["success"]:
            raise validate.ValidationFailed(f"dataset-level validation failed (see "
                                            f"{ws.artifacts_dir / 'validation_report.json'}):\n{summary}")
    example = plain_list_columns(accepted.limit(5).to_pandas()[list(schema.model_columns)])
    return PreparedData(workspace=ws, schema=schema, preprocessor=preprocessor, datasets=prepared, counts=counts,
                        suite=suite, validation_summary=summary, validation_report=report, example=example,
                        source_files=[info.events, *info.entities.values()])


def run_pipeline(cfg: PipelineConfig, fresh: bool = False, progress: Callable[[str], None] = print,
                 ray_address: str | None = None) -> PipelineResult:
    check_model_config(cfg, dataset_schema(cfg))
    ws = Workspace.resolve(cfg.workspace).create(fresh=fresh)
    timer = StepTimer(progress)
    data = prepare_data(cfg, ws, timer, ray_address)
    schema, preprocessor, prepared, counts = data.schema, data.preprocessor, data.datasets, data.counts

    import mlflow

    from . import registry
    from .train import train

    tracking_uri = registry.setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
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
            registered = registry.log_and_register(
                outcome.checkpoint_dir, example, cfg.registry.model_name,
                tags={"model": cfg.model.name, "feast_feature_service": feast_repo.FEATURE_SERVICE,
                      "test_auc": f"{test_metrics['auc']:.5f}",
                      **registry.lineage_tags(data.source_files,
                                              schema, feast_repo.FEATURE_SERVICE, cfg.to_dict())})
        mlflow.log_metrics({f"step_seconds_{k}": v for k, v in timer.seconds.items()})
        (ws.artifacts_dir / "last_run.json").write_text(json.dumps(
            {"run_id": run.info.run_id, "version": registered.version, "counts": counts,
             "step_seconds": timer.seconds}, indent=2))
    metrics = {**outcome.metrics, **{f"test_{k}": v for k, v in test_metrics.items()}}
    return PipelineResult(workspace=ws, model_name=registered.name, version=registered.version,
                          aliases=registered.aliases, metrics=metrics, counts=counts,
                          step_seconds=timer.seconds, run_id=run.info.run_id)


def evaluate_checkpoint(checkpoint_dir: Path, dataset) -> dict[str, float]:
    """Score a prepared Ray Dataset with a checkpoint on the driver (test split; small by design)."""
    import torch

    from .checkpoint import load_checkpoint
    from .train import binary_metrics

    model, _, _ = load_checkpoint(checkpoint_dir)
    labels, probs = [], []
    with torch.no_grad():
        for batch in dataset.iter_torch_batches(batch_size=4096, dtypes={"categorical": torch.int64,
                                                                          "dense": torch.float32, "label": torch.float32}):
            probs.append(torch.sigmoid(model(batch["categorical"], batch["dense"])).numpy())
            labels.append(batch["label"].numpy())
    return binary_metrics(np.concatenate(labels), np.concatenate(probs))
