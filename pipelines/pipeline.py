"""The pipeline: generate -> Feast (apply, point-in-time retrieval, materialize) -> Ray Data + Great Expectations
-> preprocess -> Ray Train -> MLflow registry. One function per step, run from one config."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mixrec.features import feast_repo
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema
from mixrec.features.synthetic import generate, write_parquet_atomic, write_sources

from .config import ConfigError, PipelineConfig
from .workspace import Workspace

SPLIT_COLUMN = "split"


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


def retrieve_training_rows(store, events: pd.DataFrame, schema: DatasetSchema, quarantine_path: Path
                           ) -> tuple[pa.Table, int]:
    """Point-in-time join; event rows Feast dropped (no feature row inside the TTL) are quarantined, not lost."""
    table = feast_repo.historical_features(store, events)
    kept = np.asarray(table[schema.event_key])
    dropped = events[~events[schema.event_key].isin(kept)]
    if len(dropped):
        dropped = dropped.assign(_failed_expectations="feast_point_in_time_join(no feature row within ttl)")
        write_parquet_atomic(dropped, quarantine_path)
    if table.num_rows + len(dropped) != len(events):
        raise RuntimeError(f"feature retrieval returned {table.num_rows} rows for {len(events)} events "
                           f"with {len(dropped)} dropped: rows duplicated by the join?")
    return table, len(dropped)


def assign_time_split(table: pa.Table, timestamp: str, valid_fraction: float, test_fraction: float) -> pa.Table:
    """Time-based split: the oldest rows train, then valid, then the newest test (cut at timestamp quantiles)."""
    ts = np.asarray(table[timestamp].cast(pa.int64()))
    train_end, valid_end = np.quantile(ts, [1 - valid_fraction - test_fraction, 1 - test_fraction])
    split = np.where(ts <= train_end, "train", np.where(ts <= valid_end, "valid", "test"))
    return table.append_column(SPLIT_COLUMN, pa.array(split))


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
    tables: object  # SyntheticTables
    preprocessor: object  # Preprocessor
    datasets: dict  # split -> Ray Dataset with categorical, dense, label
    counts: dict
    suite: dict
    validation_summary: str


def prepare_data(cfg: PipelineConfig, ws: Workspace, timer: StepTimer, ray_address: str | None = None) -> PreparedData:
    """generate -> Feast (apply, point-in-time retrieval, materialize) -> Ray Data + GX -> preprocess."""
    from .runtime import init_ray

    schema = SYNTHETIC_SCHEMA
    progress = timer.progress
    d = cfg.data

    with timer.step("generate", f"generate {d.num_events:,} synthetic events ({d.num_users:,} users, {d.num_items:,} items)"):
        tables = generate(d.num_events, d.num_users, d.num_items, d.days, d.seed)
        sources = write_sources(tables, ws.sources_dir)

    with timer.step("feast", "Feast: apply the feature repo, point-in-time retrieval, materialize"):
        store = setup_feature_store(cfg, ws, schema, sources)
        retrieved, dropped = retrieve_training_rows(store, tables.events, schema, ws.quarantine_dir / "feast_dropped.parquet")
        feast_repo.materialize(store, tables.users["event_timestamp"].min().to_pydatetime(),
                               tables.events["event_timestamp"].max().to_pydatetime(), ws.materialized_marker)

    with timer.step("ray_init", "start Ray"):
        ray = init_ray(ray_address)  # init_ray imports ray.data too

    from . import validate
    from .preprocess import fit_preprocessor

    with timer.step("validate", "Ray Data + Great Expectations: validate every batch, quarantine bad rows"):
        split_table = assign_time_split(retrieved, schema.timestamp, cfg.preprocess.valid_fraction,
                                        cfg.preprocess.test_fraction)
        train_mask = np.asarray(split_table[SPLIT_COLUMN]) == "train"
        ranges = validate.fit_dense_ranges(split_table.filter(pa.array(train_mask)), [f.name for f in schema.dense],
                                           cfg.validate_.range_margin)
        suite = validate.build_suite(schema, ranges)
        accepted, vresult = validate.validate_dataset(
            ray.data.from_arrow(split_table), suite, ws.quarantine_dir / "validation.parquet",
            cfg.validate_.max_failure_fraction, cfg.validate_.batch_size)
        counts = {"events": len(tables.events), "feast_dropped": dropped, "validated": vresult.rows_in,
                  "accepted": vresult.accepted, "quarantined": vresult.quarantined}
        progress(f"    {vresult.summary()}; dropped by the point-in-time join: {dropped}")

    with timer.step("preprocess", "preprocess: fit vocabularies and dense stats on train, apply to all splits"):
        splits = {name: accepted.filter(expr=f"{SPLIT_COLUMN} == '{name}'") for name in ("train", "valid", "test")}
        preprocessor = fit_preprocessor(splits["train"], schema, cfg.preprocess.min_count, cfg.preprocess.clip_sigma)
        preprocessor.save(ws.artifacts_dir)
        prepared = {name: ds.map_batches(preprocessor.transform_batch, batch_format="pandas").materialize()
                    for name, ds in splits.items()}
        counts.update({f"{name}_rows": ds.count() for name, ds in prepared.items()})
        # Raw held-out rows (what a registered pyfunc takes): `mixrec promote` scores champion and challenger
        # on them, each through its own preprocessing.
        holdout = splits["test"].to_pandas()[[*schema.model_columns, schema.label]]
        write_parquet_atomic(holdout, ws.holdout_path)
    return PreparedData(workspace=ws, schema=schema, tables=tables, preprocessor=preprocessor, datasets=prepared,
                        counts=counts, suite=suite, validation_summary=vresult.summary())


def run_pipeline(cfg: PipelineConfig, fresh: bool = False, progress: Callable[[str], None] = print,
                 ray_address: str | None = None) -> PipelineResult:
    check_model_config(cfg)
    ws = Workspace.resolve(cfg.workspace).create(fresh=fresh)
    timer = StepTimer(progress)
    data = prepare_data(cfg, ws, timer, ray_address)
    schema, tables, preprocessor, prepared, counts = data.schema, data.tables, data.preprocessor, data.datasets, data.counts

    import mlflow

    from . import registry
    from .train import train

    tracking_uri = registry.setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
    with mlflow.start_run(run_name=f"pipeline-{cfg.model.name}") as run:
        mlflow.log_params({"model.name": cfg.model.name, **{f"data.{k}": v for k, v in cfg.data.model_dump().items()}})
        mlflow.log_dict(cfg.to_dict(), "config.json")
        mlflow.log_dict(data.suite, "validation/suite.json")
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
            example = tables.events.head(5).merge(tables.users.drop_duplicates(schema.user_key, keep="last"),
                                                  on=schema.user_key, suffixes=("", "_u")).merge(
                tables.items, on=schema.item_key, suffixes=("", "_i"))[list(schema.model_columns)]
            registered = registry.log_and_register(
                outcome.checkpoint_dir, example, cfg.registry.model_name,
                tags={"model": cfg.model.name, "feast_feature_service": feast_repo.FEATURE_SERVICE,
                      "test_auc": f"{test_metrics['auc']:.5f}",
                      **registry.lineage_tags([ws.sources_dir / f"{n}.parquet" for n in ("events", "users", "items")],
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
