"""The data steps of a run: sources (synthetic, or a dataset from its schema file) -> Feast (apply,
point-in-time retrieval, materialize) -> Ray Data + Great Expectations -> preprocessing -> dataset-level
checks. :func:`prepare_data` hands training a :class:`PreparedData`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mixrec.features import adapters, feast_repo
from mixrec.features.adapters import SourceInfo
from mixrec.features.dataset import SPLIT_COLUMN
from mixrec.features.io import write_dataset_atomic, write_json_atomic
from mixrec.features.multihot import plain_list_columns
from mixrec.features.schema import SYNTHETIC_SCHEMA, DatasetSchema
from mixrec.features.splits import split_by_time, time_cuts
from mixrec.features.synthetic import generate, write_sources

from .config import ConfigError, PipelineConfig, data_root, dataset_spec
from .ingest import chunk_count, retrieve_to_shards
from .progress import StepTimer, relay
from .runtime import quiet_output
from .secrets import redact
from .workspace import Workspace


def feast_settings(cfg: PipelineConfig, ws: Workspace) -> tuple[str | dict, dict]:
    registry = cfg.features.registry or str(ws.feast_registry)
    online = cfg.features.online_store or {"type": "sqlite", "path": str(ws.online_store_db)}
    return registry, online


def write_feature_store_config(cfg: PipelineConfig, ws: Workspace) -> Path:
    """The workspace's ``feature_store.yaml``. Secrets stay ``${NAME}`` references in the file: Feast fills
    them from the environment when it reads it."""
    registry, online = redact(feast_settings(cfg, ws))
    return feast_repo.write_repo_config(ws.feast_repo, cfg.features.project, registry, online,
                                        redact(cfg.features.offline_store))


def setup_feature_store(cfg: PipelineConfig, ws: Workspace, schema: DatasetSchema, sources: dict[str, Path]):
    write_feature_store_config(cfg, ws)
    store = feast_repo.open_store(ws.feast_repo)
    with quiet_output():  # Feast prints coloured (ANSI) messages
        feast_repo.apply(store, feast_repo.write_definitions(ws.feast_repo, schema, sources, cfg.features.ttl_days))
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
    source_files: list[Path] = field(default_factory=list)  # canonical Parquet sources, events first (lineage)


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
    from .runtime import check_train_fits, init_ray

    progress = timer.progress
    schema, info = load_sources(cfg, ws, timer)

    with timer.step("ray_init", "start Ray"):
        ray = init_ray(ray_address)  # init_ray imports ray.data too
        check_train_fits(cfg.train.num_workers, cfg.train.cpus_per_worker, ray.cluster_resources().get("CPU", 0.0))

    with timer.step("feast", "Feast: apply the feature repo, point-in-time retrieval, materialize"):
        f = cfg.features
        store = setup_feature_store(cfg, ws, schema, {"row": info.events, **info.entities})
        with timer.tracker("point-in-time retrieval", chunk_count(info.events, f.retrieval_chunk_rows),
                           "chunks") as chunks:
            retrieval = retrieve_to_shards(ws.feast_repo, info.events, schema, ws.retrieved_dir,
                                           ws.feast_dropped_path, f.retrieval_chunk_rows, f.retrieval_parallelism,
                                           on_chunk=lambda c: chunks.advance(1, f"{c['joined']:,} rows joined"))
        start = info.min_time - pd.Timedelta(days=f.ttl_days)
        with quiet_output():
            feast_repo.materialize(store, start.to_pydatetime(), info.max_time.to_pydatetime(),
                                   tuple(s for s in schema.entity_sources if s != "row"), ws.materialized_marker)

    from ray.data.expressions import col

    from . import dataset_checks, validate
    from .preprocess import fit_preprocessor

    with timer.step("validate", "Ray Data + Great Expectations: validate every batch, quarantine bad rows"):
        rows = ray.data.read_parquet(str(ws.retrieved_dir))
        ranges = validate.widen_ranges(retrieval.train_bounds, [f.name for f in schema.dense],
                                       cfg.validate_.range_margin)
        # Types as the rows come out of retrieval (adapters cast to the schema, Feast keeps their types).
        reference = pq.read_schema(min(ws.retrieved_dir.glob("*.parquet")))
        suite = validate.build_suite(schema, ranges, validate.column_types(reference, schema.required_columns))
        with (timer.tracker("validation", retrieval.joined, "rows") as checked,
              relay(None if timer.mode == "off" else checked.advance) as batches):
            accepted, vresult = validate.validate_dataset(
                rows, suite, ws.validation_quarantine_path, cfg.validate_.max_failure_fraction,
                cfg.validate_.batch_size, validated_dir=ws.validated_dir, progress_queue=batches)
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
                                 ws.prepared_split(name))
            prepared[name] = ray.data.read_parquet(str(ws.prepared_split(name)))
        # Raw held-out rows (what a registered pyfunc takes): `mixrec promote` scores champion and challenger
        # on them, each through its own preprocessing.
        write_dataset_atomic(splits["test"].select_columns([*schema.model_columns, schema.label]), ws.holdout_path)

    with timer.step("dataset_checks", "Great Expectations on aggregates: row counts, label-rate and unseen-value drift"):
        v = cfg.validate_
        aggregates = dataset_checks.split_aggregates(prepared, preprocessor.categorical, preprocessor.bag_sizes)
        counts.update({f"{r['split']}_rows": int(r["rows"]) for r in aggregates.to_dict("records")})
        result = dataset_checks.check_dataset(aggregates, v.min_rows, v.max_label_rate_drift,
                                              v.max_unseen_rate_increase)
        report, summary = dataset_checks.validation_report(vresult, aggregates, result, asdict(retrieval))
        write_json_atomic(report, ws.validation_report_path)
        progress("    " + summary.replace("\n", "\n    "))
        if not report["success"]:
            raise validate.ValidationFailed(f"dataset-level validation failed (see "
                                            f"{ws.validation_report_path}):\n{summary}")
    example = plain_list_columns(accepted.limit(5).to_pandas()[list(schema.model_columns)])
    return PreparedData(workspace=ws, schema=schema, preprocessor=preprocessor, datasets=prepared, counts=counts,
                        suite=suite, validation_summary=summary, validation_report=report, example=example,
                        source_files=[info.events, *info.entities.values()])
