"""The A/B simulation's outputs: the markdown report, the plots and the MLflow run of one simulation
(:func:`mixrec.serving.abtest.simulate` computes what they show)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from mixrec.pipelines.config import PipelineConfig
from mixrec.pipelines.registry import setup_tracking
from mixrec.pipelines.workspace import Workspace

from .abanalysis import AbAnalysis, SimulationSpec


def report_markdown(a: AbAnalysis, spec: SimulationSpec) -> str:
    lines = ["# A/B simulation", "",
             f"{a.requests} requests ({a.failed} failed), {spec.candidates} candidates each, seed {spec.seed}; "
             f"arms and versions {a.versions}, weights {a.weights}.", "",
             "| arm | version | impressions | clicks | CTR | 95% CI | true CTR |", "|---|---|---|---|---|---|---|"]
    for s in a.arms:
        lines.append(f"| {s.arm} | {a.versions.get(s.arm, '?')} | {s.impressions} | {s.clicks} | {s.ctr:.4f} | "
                     f"[{s.ctr_low:.4f}, {s.ctr_high:.4f}] | {a.true_ctr.get(s.arm, float('nan')):.4f} |")
    if a.reference_ctr:
        lines += ["", f"Reference CTRs on this plan: random ranking {a.reference_ctr['random']:.4f}, "
                      f"perfect ranking {a.reference_ctr['oracle']:.4f}."]
    if a.lift:
        lt = a.lift
        lines += ["", f"**Lift of {lt.treatment} over {lt.control}**: {lt.absolute_lift:+.4f} absolute "
                      f"(95% CI [{lt.absolute_low:+.4f}, {lt.absolute_high:+.4f}]), {lt.relative_lift:+.1%} relative; "
                      f"two-proportion z = {lt.z:.2f}, p = {lt.p_value:.2e} -> "
                      + (f"significant at alpha {spec.alpha}, winner **{lt.winner}**." if lt.significant
                         else f"not significant at alpha {spec.alpha}.")]
    if a.sequential is not None and len(a.sequential.p_values):
        s = a.sequential
        lines += ["", f"**Sequential (mSPRT, tau {s.tau})**: always-valid p = {s.p_values[-1]:.2e} after "
                      f"{int(s.looks[-1])} impressions; "
                      + (f"boundary crossed at {s.stopped_at} impressions." if s.stopped_at else "boundary not crossed.")]
    srm = a.srm
    lines += ["", f"**Sample-ratio check**: observed {srm.observed} vs expected shares "
                  f"{ {k: round(v, 3) for k, v in srm.expected_share.items()} }: chi2 = {srm.chi2:.2f}, "
                  f"p = {srm.p_value:.2e} -> " + ("**SAMPLE RATIO MISMATCH**: do not trust the lift."
                                                  if srm.mismatch else "no mismatch."), ""]
    return "\n".join(lines)


def write_plots(log: pd.DataFrame, a: AbAnalysis, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = [s.arm for s in a.arms]
    ctr = np.array([s.ctr for s in a.arms])
    err = np.array([[s.ctr - s.ctr_low for s in a.arms], [s.ctr_high - s.ctr for s in a.arms]])
    ax.bar(names, ctr, yerr=err, capsize=6, color="#4C78A8", label="observed CTR (95% CI)")
    ax.scatter(names, [a.true_ctr[n] for n in names], color="#E45756", zorder=3, label="true CTR")
    ax.set_ylabel("CTR")
    ax.legend(fontsize=8)
    ax.set_title("CTR per arm")
    paths.append(out_dir / "ctr_by_arm.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2 if a.sequential is not None else 1, figsize=(10, 3.5), squeeze=False)
    for arm, part in log.groupby("arm"):
        n = np.arange(1, len(part) + 1)
        axes[0, 0].plot(n, part["click"].cumsum().to_numpy() / n, label=arm)
    axes[0, 0].set_xlabel("impressions in the arm")
    axes[0, 0].set_ylabel("cumulative CTR")
    axes[0, 0].legend(fontsize=8)
    if a.sequential is not None and len(a.sequential.p_values):
        s = a.sequential
        axes[0, 1].semilogy(s.looks, s.p_values, marker=".")
        axes[0, 1].axhline(s.alpha, color="grey", ls="--", label=f"alpha {s.alpha}")
        axes[0, 1].set_xlabel("impressions (both arms)")
        axes[0, 1].set_ylabel("always-valid p (mSPRT)")
        axes[0, 1].legend(fontsize=8)
    paths.append(out_dir / "cumulative_ctr.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write_report(log: pd.DataFrame, analysis: AbAnalysis, spec: SimulationSpec, out_dir: Path) -> list[Path]:
    """``report.md`` and the plots into ``out_dir``; returns their paths."""
    report = out_dir / "report.md"
    report.write_text(report_markdown(analysis, spec))
    return [report, *write_plots(log, analysis, out_dir)]


def log_run(cfg: PipelineConfig, ws: Workspace, out_dir: Path, analysis: AbAnalysis, spec: SimulationSpec) -> str:
    """One MLflow run (nested under an active one, e.g. a promotion's): the spec, versions, metrics, verdict
    tags and the whole output folder as artifacts."""
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
    with mlflow.start_run(run_name="abtest-simulate", nested=mlflow.active_run() is not None) as run:
        mlflow.log_params({f"ab.{k}": v for k, v in asdict(spec).items()})
        mlflow.log_params({f"ab.version.{arm}": v for arm, v in analysis.versions.items()})
        mlflow.log_metrics(analysis.metrics())
        mlflow.set_tags({"ab.treatment_wins": str(analysis.treatment_wins),
                         "ab.srm_mismatch": str(analysis.srm.mismatch)})
        mlflow.log_artifacts(str(out_dir), "abtest")
    return run.info.run_id
