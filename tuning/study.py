"""Scaling studies: architectures x a size grid (x data fractions), each point one Ray Train run under Ray Tune,
with ASHA over learning rates within a size; power-law fits per architecture (on synthetic data also of the
loss above the generator's Bayes logloss, a floor known exactly); the ROI-optimal configuration.

A study file (YAML, tuning/config.py) looks like ``configs/study_demo.yaml``. Finished points are appended
to ``results.jsonl`` in the study folder as soon as they end, so a failed point, Ctrl-C or a crash never
loses them, and ``mixrec tune STUDY.yaml --resume`` runs only the points still missing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mixrec.features.io import write_frame_atomic, write_json_atomic, write_text_atomic
from mixrec.pipelines.config import ConfigError
from mixrec.pipelines.secrets import redact

from .analysis import analyse, plot
from .config import StudyConfig, load_study, points

__all__ = ["RESULTS", "load_study", "run_study"]

RESULTS = "results.jsonl"


def _trial(config: dict, datasets: dict, preprocessor, study_json: dict, storage: str) -> None:
    """One Tune trial = one Ray Train run of one point at one learning rate."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from mixrec.pipelines.train import train

    study = StudyConfig.model_validate(study_json)
    point = config["point"]
    train_ds = datasets["train"]
    if point["fraction"] < 1.0:
        train_ds = train_ds.limit(max(1, int(train_ds.count() * point["fraction"])))
    train_cfg = study.pipeline.train.model_copy(update={"learning_rate": config["learning_rate"],
                                                        "epochs": study.epochs})
    trial_id = tune.get_context().get_trial_id()
    outcome = train(train_ds, datasets["valid"], preprocessor, point["arch"], point["kwargs"], train_cfg,
                    Path(storage), run_name=f"trial-{trial_id}", callbacks=[TuneReportCallback()], max_failures=0)
    tune.report({**{k: v for k, v in outcome.metrics.items() if isinstance(v, int | float)}, "done": True})


def uses_asha(study: StudyConfig) -> bool:
    """ASHA only where it can stop a trial early: several learning rates and more than one epoch. With one
    epoch its only rung is the end of training, so it would save nothing, and a trial it stops leaves its Ray
    Train placement group behind (Ray 2.60: the CPU stays reserved and every later trial waits for it until
    its worker group times out), so one-epoch studies run every learning rate to the end (FIFO)."""
    return len(study.learning_rates) > 1 and study.epochs > 1


def _run_point(study: StudyConfig, point: dict, row: dict, trainable, train_rows: int, out_dir: Path) -> None:
    """One Tune experiment for ``point`` (a trial per learning rate); its outcome goes into ``row``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    lrs = study.learning_rates or [study.pipeline.train.learning_rate]
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=study.epochs + 1, grace_period=1,
                              reduction_factor=2) if uses_asha(study) else None
    tuner = tune.Tuner(
        trainable,
        param_space={"point": point, "learning_rate": tune.grid_search(lrs)},
        tune_config=tune.TuneConfig(metric="valid_logloss", mode="min", scheduler=scheduler,
                                    max_concurrent_trials=study.max_concurrent_trials),
        run_config=tune.RunConfig(name=point["id"].replace("[", "_").replace("]", "_").replace("=", "-"),
                                  storage_path=str(out_dir / "tune"), verbose=0),
    )
    grid = tuner.fit()
    ok = [r for r in grid if r.error is None and r.metrics and "valid_logloss" in r.metrics]
    if ok:
        best = min(ok, key=lambda r: r.metrics["valid_logloss"])
        m = best.metrics
        examples = train_rows * point["fraction"] * (m.get("epoch", study.epochs - 1) + 1)
        row.update({"status": "finished", "learning_rate": best.config["learning_rate"],
                    "valid_logloss": m["valid_logloss"], "valid_auc": m["valid_auc"],
                    "training_flops": 3.0 * row["flops_per_example"] * examples, "error": ""})
    else:
        errors = "; ".join(str(r.error).strip().splitlines()[-1][:300] for r in grid if r.error) or "no result"
        reason = "out of memory" if "OutOfMemory" in errors or "out of memory" in errors.lower() else errors
        row.update({"status": "failed", "learning_rate": math.nan, "valid_logloss": math.nan,
                    "valid_auc": math.nan, "training_flops": math.nan, "error": reason})


def bayes_logloss(study: StudyConfig, source_events: Path) -> float | None:
    """The validation logloss of the synthetic generator's hidden click model, the floor under every model's
    loss (None for a dataset, whose floor is unknown). Scored on the validation rows of the generated events."""
    from mixrec.features.dataset import SPLIT_COLUMN
    from mixrec.features.synthetic import GroundTruth
    from mixrec.pipelines.config import dataset_spec
    from mixrec.pipelines.metrics import binary_metrics

    if dataset_spec(study.pipeline) is not None:
        return None
    d = study.pipeline.data
    events = pd.read_parquet(source_events, filters=[(SPLIT_COLUMN, "==", "valid")])
    probs = GroundTruth(d.num_users, d.num_items, d.days, d.seed).event_probability(events)
    return binary_metrics(events["label"].to_numpy(), probs)["logloss"]


def _record(results_path: Path, row: dict) -> None:
    with results_path.open("a") as f:  # one line per finished point, flushed at once: never lost
        f.write(json.dumps(row) + "\n")


def _write_tables(results: pd.DataFrame, analysis: dict, out_dir: Path) -> list[Path]:
    """results.csv and results.parquet (kwargs as JSON text), analysis.json."""
    flat = results.assign(kwargs=results["kwargs"].map(json.dumps))
    return [write_text_atomic(flat.to_csv(index=False), out_dir / "results.csv"),
            write_frame_atomic(flat, out_dir / "results.parquet"),
            write_json_atomic(analysis, out_dir / "analysis.json")]


def _log_study(study: StudyConfig, results: pd.DataFrame, analysis: dict, outputs: list[Path]) -> str:
    """One MLflow run ``study-NAME``: the study, every output and the fitted exponents; returns its id."""
    import mlflow

    with mlflow.start_run(run_name=f"study-{study.name}") as run:
        mlflow.log_dict(redact(study.model_dump(mode="json", by_alias=True)), "study.json")
        for path in outputs:
            mlflow.log_artifact(str(path))
        for arch, fit in analysis["fits"].items():
            for axis, f in fit.items():
                if np.isfinite(f["alpha"]):
                    mlflow.log_metric(f"alpha_{arch}_{axis}", f["alpha"])
                if np.isfinite(f.get("reducible", {}).get("exponent", math.nan)):
                    mlflow.log_metric(f"reducible_exponent_{arch}_{axis}", f["reducible"]["exponent"])
        if analysis["bayes_logloss"] is not None:
            mlflow.log_metric("bayes_logloss", analysis["bayes_logloss"])
        mlflow.log_metrics({"points_finished": int((results["status"] == "finished").sum()),
                            "points_failed": int((results["status"] == "failed").sum())})
    return run.info.run_id


def run_study(study: StudyConfig, resume: bool = False, progress=print, mode: str = "off") -> dict:
    """Run every point still missing, then fit, plot and log the whole study; returns its results, analysis,
    plots, folder and MLflow run id. ``mode``: progress of the long steps (``pipelines.progress.Tracker``)."""
    from ray import tune

    from mixrec.models import build_model
    from mixrec.pipelines.prepare import prepare_data
    from mixrec.pipelines.progress import StepTimer
    from mixrec.pipelines.registry import setup_tracking
    from mixrec.pipelines.workspace import Workspace

    ws = Workspace.resolve(study.pipeline.workspace).create()
    out_dir = ws.study_dir(study.name)
    if out_dir.exists() and not resume and (out_dir / RESULTS).exists():
        raise ConfigError(f"study {study.name!r} already has results in {out_dir}: use --resume, or another name")
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS
    finished = {json.loads(line)["id"] for line in results_path.read_text().splitlines()} if results_path.exists() else set()
    timer = StepTimer(progress, mode)
    data = prepare_data(study.pipeline, ws, timer)
    # Every trial reads the same splits: hold them in the object store once (it spills to disk when full)
    # rather than have each trial's Ray Data read tasks compete with the trials' Train workers for CPUs.
    data.datasets = {name: ds.materialize() for name, ds in data.datasets.items()}
    layout = data.preprocessor.layout()
    train_rows = data.datasets["train"].count()
    trainable = tune.with_resources(
        tune.with_parameters(_trial, datasets=data.datasets, preprocessor=data.preprocessor,
                             study_json=study.model_dump(mode="json", by_alias=True),
                             storage=str(out_dir / "train")),
        {"cpu": 0.01})  # the trial only waits on its trainer; a whole CPU here would starve the trainer

    todo = [p for p in points(study) if p["id"] not in finished]
    progress(f"study {study.name}: {len(todo)} point(s) to run, {len(finished)} already finished")
    with timer.tracker("study points", len(todo), "points") as tracker:
        for p in todo:
            model = build_model(p["arch"], layout, **p["kwargs"])
            row = {"id": p["id"], "arch": p["arch"], "kwargs": p["kwargs"], "data_fraction": p["fraction"],
                   "parameters": model.num_parameters(),
                   "dense_parameters": model.num_parameters(embeddings=False), "flops_per_example": model.flops_per_example()}
            t0 = time.perf_counter()
            _run_point(study, p, row, trainable, train_rows, out_dir)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            _record(results_path, row)
            tracker.advance(1, row["id"], line=f"{row['id']}: {row['status']} " + (
                f"logloss {row['valid_logloss']:.4f}" if row["status"] == "finished" else row["error"]))

    results = pd.DataFrame([json.loads(line) for line in results_path.read_text().splitlines()])
    analysis = analyse(results, study.flops_budget, bayes_logloss(study, data.source_files[0]))
    tables = _write_tables(results, analysis, out_dir)
    plots = plot(results, analysis, out_dir)
    setup_tracking(study.pipeline.registry.tracking_uri, study.pipeline.registry.experiment, ws)
    run_id = _log_study(study, results, analysis, [*tables, *plots])
    return {"results": results, "analysis": analysis, "plots": plots, "out_dir": out_dir, "run_id": run_id}
