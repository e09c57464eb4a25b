"""Scaling studies: architectures x a size grid (x data fractions), each point one Ray Train run under Ray Tune,
with ASHA over learning rates within a size; power-law fits per architecture; the ROI-optimal configuration.

A study file (YAML) looks like ``configs/study_demo.yaml``. Finished points are appended to
``results.jsonl`` in the study folder as soon as they end, so a failed point, Ctrl-C or a crash never loses
them, and ``mixrec tune STUDY.yaml --resume`` runs only the points still missing.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mixrec.pipelines.config import ConfigError, PipelineConfig, expand_env

RESULTS = "results.jsonl"


class ArchitectureGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="constructor kwarg -> values (the sizes)")
    fixed: dict[str, Any] = Field(default_factory=dict, description="constructor kwargs shared by every size")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    architectures: dict[str, ArchitectureGrid] = Field(..., min_length=1)
    learning_rates: list[float] = Field(default_factory=list, description="searched with ASHA within each size")
    data_fractions: list[float] = Field(default_factory=lambda: [1.0])
    epochs: int = Field(2, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    flops_budget: float | None = Field(None, gt=0, description="forward FLOPs per example allowed for the ROI pick")

    @field_validator("data_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("must be a non-empty list of fractions in (0, 1]")
        return v


def load_study(path: str | Path) -> StudyConfig:
    """Parse and check a study before any trial starts: every bad field is named."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        data = yaml.safe_load(expand_env(path.read_text(), str(path))) or {}
        study = StudyConfig.model_validate(data)
    except yaml.YAMLError as err:
        raise ConfigError(f"study file {path} is not valid YAML: {err}") from None
    except ValidationError as err:
        lines = [f"invalid study {path}:"] + [f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None
    check_points(study)
    return study


def points(study: StudyConfig) -> list[dict]:
    """Every (architecture, size, data fraction) point of the grid, with a stable id."""
    out = []
    for arch, spec in study.architectures.items():
        keys = sorted(spec.grid)
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            kwargs = {**spec.fixed, **dict(zip(keys, values, strict=True))}
            for fraction in study.data_fractions:
                size = "-".join(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in zip(keys, values, strict=True))
                out.append({"id": f"{arch}[{size}]@{fraction:g}", "arch": arch, "kwargs": kwargs, "fraction": fraction})
    return out


def check_points(study: StudyConfig) -> None:
    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.models import FeatureLayout, available_models, build_model

    known = available_models()
    for arch, spec in study.architectures.items():
        if arch not in known:
            raise ConfigError(f"architectures.{arch}: unknown architecture; allowed: {', '.join(known)}")
        if not spec.grid:
            raise ConfigError(f"architectures.{arch}.grid: empty; give at least one size parameter with values")
        for key, values in spec.grid.items():
            if not values:
                raise ConfigError(f"architectures.{arch}.grid.{key}: empty list of values")
    layout = FeatureLayout(cardinalities=(2,) * len(schema.categorical), n_dense=len(schema.dense))
    for p in points(study):
        try:
            build_model(p["arch"], layout, **p["kwargs"])
        except (ValueError, TypeError) as err:
            raise ConfigError(f"architectures.{p['arch']}: size {p['kwargs']} is not accepted: {err}") from None


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


def _fit_power_law(x: np.ndarray, loss: np.ndarray) -> dict:
    """loss = a * (x / x0)^(-alpha) + c, least squares; 95 % interval on alpha from the covariance."""
    from scipy.optimize import curve_fit

    if len(x) < 3:
        return {"points": int(len(x)), "alpha": math.nan, "alpha_low": math.nan, "alpha_high": math.nan,
                "a": math.nan, "c": math.nan, "note": "fewer than 3 finished points: no fit"}
    x0 = float(x.min())
    f = lambda xx, a, alpha, c: a * (xx / x0) ** (-alpha) + c  # noqa: E731
    span = float(loss.max() - loss.min()) or 1e-3
    try:
        (a, alpha, c), cov = curve_fit(f, x, loss, p0=(span, 0.3, float(loss.min()) * 0.9),
                                       bounds=([0, 0, 0], [np.inf, 5.0, float(loss.min())]), maxfev=20000)
    except (RuntimeError, ValueError) as err:
        return {"points": int(len(x)), "alpha": math.nan, "alpha_low": math.nan, "alpha_high": math.nan,
                "a": math.nan, "c": math.nan, "note": f"fit failed: {err}"}
    se = math.sqrt(cov[1, 1]) if np.isfinite(cov[1, 1]) and len(x) > 3 else math.nan
    return {"points": int(len(x)), "alpha": float(alpha), "alpha_low": float(alpha - 1.96 * se),
            "alpha_high": float(alpha + 1.96 * se), "a": float(a), "c": float(c), "x0": x0,
            "note": "" if len(x) > 3 else "3 points for 3 parameters: no interval"}


def analyse(results: pd.DataFrame, flops_budget: float | None) -> dict:
    """Power-law fits per architecture against parameters and training FLOPs; the ROI pick."""
    done = results[results["status"] == "finished"]
    fits = {}
    for arch, g in done.groupby("arch"):
        fits[arch] = {axis: _fit_power_law(g[axis].to_numpy(float), g["valid_logloss"].to_numpy(float))
                      for axis in ("parameters", "training_flops")}
    eligible = done if flops_budget is None else done[done["flops_per_example"] <= flops_budget]
    pick = None
    if len(eligible):
        best = eligible.sort_values(["valid_logloss", "flops_per_example"]).iloc[0]
        pick = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items() if k != "kwargs"}
        pick["kwargs"] = best["kwargs"]
    return {"fits": fits, "roi_pick": pick, "flops_budget": flops_budget}


def plot(results: pd.DataFrame, analysis: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = results[results["status"] == "finished"]
    paths = []
    for axis, label in (("parameters", "parameters"), ("training_flops", "training FLOPs")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for arch, g in done.groupby("arch"):
            g = g.sort_values(axis)
            line = ax.plot(g[axis], g["valid_logloss"], "o", label=arch)[0]
            fit = analysis["fits"].get(arch, {}).get(axis, {})
            if np.isfinite(fit.get("alpha", math.nan)):
                xs = np.geomspace(g[axis].min(), g[axis].max(), 50)
                ys = fit["a"] * (xs / fit["x0"]) ** (-fit["alpha"]) + fit["c"]
                ax.plot(xs, ys, "-", color=line.get_color(), label=f"{arch} fit: alpha={fit['alpha']:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation logloss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"scaling_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _record(results_path: Path, row: dict) -> None:
    with results_path.open("a") as f:  # one line per finished point, flushed at once: never lost
        f.write(json.dumps(row) + "\n")


def run_study(study: StudyConfig, resume: bool = False, progress=print) -> dict:
    import mlflow
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from mixrec.models import build_model
    from mixrec.pipelines.prepare import prepare_data
    from mixrec.pipelines.progress import StepTimer
    from mixrec.pipelines.registry import setup_tracking
    from mixrec.pipelines.workspace import Workspace

    ws = Workspace.resolve(study.pipeline.workspace).create()
    out_dir = ws.root / "studies" / study.name
    if out_dir.exists() and not resume and (out_dir / RESULTS).exists():
        raise ConfigError(f"study {study.name!r} already has results in {out_dir}: use --resume, or another name")
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS
    finished = {json.loads(line)["id"] for line in results_path.read_text().splitlines()} if results_path.exists() else set()
    timer = StepTimer(progress)
    data = prepare_data(study.pipeline, ws, timer)
    # Every trial reads the same splits: hold them in the object store once (it spills to disk when full)
    # rather than have each trial's Ray Data read tasks compete with the trials' Train workers for CPUs.
    data.datasets = {name: ds.materialize() for name, ds in data.datasets.items()}
    layout = data.preprocessor.layout()
    train_rows = data.datasets["train"].count()
    lrs = study.learning_rates or [study.pipeline.train.learning_rate]
    trainable = tune.with_resources(
        tune.with_parameters(_trial, datasets=data.datasets, preprocessor=data.preprocessor,
                             study_json=study.model_dump(mode="json", by_alias=True),
                             storage=str(out_dir / "train")),
        {"cpu": 0.01})  # the trial only waits on its trainer; a whole CPU here would starve the trainer

    todo = [p for p in points(study) if p["id"] not in finished]
    progress(f"study {study.name}: {len(todo)} point(s) to run, {len(finished)} already finished")
    for p in todo:
        model = build_model(p["arch"], layout, **p["kwargs"])
        row = {"id": p["id"], "arch": p["arch"], "kwargs": p["kwargs"], "data_fraction": p["fraction"],
               "parameters": model.num_parameters(), "flops_per_example": model.flops_per_example()}
        t0 = time.perf_counter()
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=study.epochs + 1, grace_period=1,
                                  reduction_factor=2) if len(lrs) > 1 else None
        tuner = tune.Tuner(
            trainable,
            param_space={"point": p, "learning_rate": tune.grid_search(lrs)},
            tune_config=tune.TuneConfig(metric="valid_logloss", mode="min", scheduler=scheduler,
                                        max_concurrent_trials=study.max_concurrent_trials),
            run_config=tune.RunConfig(name=p["id"].replace("[", "_").replace("]", "_").replace("=", "-"),
                                      storage_path=str(out_dir / "tune"), verbose=0),
        )
        grid = tuner.fit()
        ok = [r for r in grid if r.error is None and r.metrics and "valid_logloss" in r.metrics]
        if ok:
            best = min(ok, key=lambda r: r.metrics["valid_logloss"])
            m = best.metrics
            examples = train_rows * p["fraction"] * (m.get("epoch", study.epochs - 1) + 1)
            row.update({"status": "finished", "learning_rate": best.config["learning_rate"],
                        "valid_logloss": m["valid_logloss"], "valid_auc": m["valid_auc"],
                        "training_flops": 3.0 * row["flops_per_example"] * examples, "error": ""})
        else:
            errors = "; ".join(str(r.error).strip().splitlines()[-1][:300] for r in grid if r.error) or "no result"
            reason = "out of memory" if "OutOfMemory" in errors or "out of memory" in errors.lower() else errors
            row.update({"status": "failed", "learning_rate": math.nan, "valid_logloss": math.nan,
                        "valid_auc": math.nan, "training_flops": math.nan, "error": reason})
        row["seconds"] = round(time.perf_counter() - t0, 1)
        _record(results_path, row)
        progress(f"  {row['id']}: {row['status']} "
                 + (f"logloss {row['valid_logloss']:.4f}" if row["status"] == "finished" else row["error"]))

    results = pd.DataFrame([json.loads(line) for line in results_path.read_text().splitlines()])
    analysis = analyse(results, study.flops_budget)
    flat = results.assign(kwargs=results["kwargs"].map(json.dumps))
    flat.to_csv(out_dir / "results.csv", index=False)
    flat.to_parquet(out_dir / "results.parquet", index=False)
    (out_dir / "analysis.json").write_text(json.dumps(analysis, indent=2, default=str))
    plots = plot(results, analysis, out_dir)
    setup_tracking(study.pipeline.registry.tracking_uri, study.pipeline.registry.experiment, ws)
    with mlflow.start_run(run_name=f"study-{study.name}") as run:
        mlflow.log_dict(study.model_dump(mode="json", by_alias=True), "study.json")
        for path in (out_dir / "results.csv", out_dir / "results.parquet", out_dir / "analysis.json", *plots):
            mlflow.log_artifact(str(path))
        for arch, fit in analysis["fits"].items():
            for axis, f in fit.items():
                if np.isfinite(f["alpha"]):
                    mlflow.log_metric(f"alpha_{arch}_{axis}", f["alpha"])
        mlflow.log_metrics({"points_finished": int((results["status"] == "finished").sum()),
                            "points_failed": int((results["status"] == "failed").sum())})
    return {"results": results, "analysis": analysis, "plots": plots, "out_dir": out_dir, "run_id": run.info.run_id}
