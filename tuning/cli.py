"""The tuning verb: ``tune``. :func:`register` adds it to the root command (``mixrec.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixrec.pipelines.cli_args import JsonOpt, echo_json, stdout_to_stderr


def tune(study: Annotated[Path, typer.Argument(help="study YAML (see configs/study_demo.yaml)")],
         resume: Annotated[bool, typer.Option("--resume", help="continue a stopped study: run only missing points")] = False,
         as_json: JsonOpt = False) -> None:
    """Scaling study: architectures x sizes as Ray Train trials under Ray Tune; power-law fits, plots, ROI pick."""
    from mixrec.pipelines.runtime import progress_mode

    from .config import load_study
    from .study import run_study

    spec = load_study(study)
    with stdout_to_stderr(as_json):
        out = run_study(spec, resume=resume, progress=typer.echo, mode=progress_mode())
    if as_json:
        echo_json({"analysis": out["analysis"], "out_dir": str(out["out_dir"]), "mlflow_run_id": out["run_id"]})
        return
    floor = out["analysis"]["bayes_logloss"]
    if floor is not None:
        typer.echo(f"Bayes logloss of the validation rows (the floor): {floor:.4f}")
    for arch, fit in out["analysis"]["fits"].items():
        for axis, f in fit.items():
            r = f.get("reducible")
            above = "" if r is None else (f" above the floor: exponent={r['exponent']:.3f} "
                                          f"[{r['exponent_low']:.3f}, {r['exponent_high']:.3f}]")
            typer.echo(f"{arch:<14} loss ~ C^-alpha vs {axis:<15} alpha={f['alpha']:.3f} "
                       f"[{f['alpha_low']:.3f}, {f['alpha_high']:.3f}] log-log slope={f['slope']:.3f} "
                       f"[{f['slope_low']:.3f}, {f['slope_high']:.3f}]{above} ({f['points']} points) {f['note']}")
    pick = out["analysis"]["roi_pick"]
    if pick:
        typer.echo(f"ROI pick (budget {out['analysis']['flops_budget']} FLOPs/example): {pick['id']} "
                   f"logloss {pick['valid_logloss']:.4f}")
    typer.echo(f"results, plots and fits: {out['out_dir']} (MLflow run {out['run_id']})")


def register(app: typer.Typer) -> None:
    app.command()(tune)
