"""``mixrec promote``: the registry's offline gate, with ``--require-ab`` wired to serving's online A/B gate
(the one verb that needs both pipelines and serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixrec.pipelines.cli_args import (
    ConfigOpt,
    JsonOpt,
    WorkspaceOpt,
    echo_json,
    fail,
    stdout_to_stderr,
    tracking_config,
)
from mixrec.serving.cli import (
    CandidatesOpt,
    ConcurrencyOpt,
    RateOpt,
    RequestsOpt,
    SeedOpt,
    echo_ab_result,
    simulation_spec,
)


def promote(version: Annotated[str, typer.Argument(help="model version to make champion")],
            config: ConfigOpt = None, workspace: WorkspaceOpt = None,
            reason: Annotated[str, typer.Option(help="why (recorded as a tag)")] = "manual promotion",
            force: Annotated[bool, typer.Option("--force", help="promote even when a gate fails (recorded)")] = False,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="run the gate(s) and print the verdict; move no "
                                                  "alias, write nothing (exit 0: would promote, 1: would refuse)")]
            = False,
            require_ab: Annotated[bool, typer.Option("--require-ab", help="also require a simulated online A/B "
                                                     "test through the served endpoint to favour VERSION")] = False,
            data: Annotated[Path | None, typer.Option(help="held-out Parquet (model columns + label); default: "
                                                      "the workspace's test split")] = None,
            requests: RequestsOpt = 2000, rate: RateOpt = 200.0, concurrency: ConcurrencyOpt = 16,
            candidates: CandidatesOpt = 20, seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Move `champion` to VERSION if it beats the champion on held-out data (paired bootstrap CIs of the AUC
    and logloss deltas), and with --require-ab also in a simulated A/B test; --force overrides, --dry-run only
    reports."""
    from mixrec.pipelines.promotion import gated_promote
    from mixrec.serving.abtest import ab_gate

    if dry_run and force:
        fail("--dry-run and --force exclude each other: a dry run moves nothing")
    cfg = tracking_config(config, workspace)
    gate = ab_gate(simulation_spec(requests, rate, concurrency, candidates, seed, True)) if require_ab else None
    # A refused gate raises PromotionRefused: one line with every reason, exit 1 (see mixrec.cli.errors).
    with stdout_to_stderr(as_json):
        out = gated_promote(cfg, version, force=force, online_gate=gate, data=data, reason=reason, dry_run=dry_run,
                            progress=typer.echo)
    if as_json:
        echo_json({"model_name": out.model_name, "version": version, "promoted": out.promoted,
                   "dry_run": out.dry_run, "passed": out.passed, "reasons": out.reasons,
                   "champion_before": out.champion_before, "offline": out.comparison.flat(),
                   "online": None if out.online is None else {"passed": out.online.passed,
                                                             "reasons": out.online.reasons,
                                                             "run_id": out.online.run_id},
                   "eval_run_id": out.eval_run_id})
        if out.dry_run and not out.passed:
            raise typer.Exit(1)
        return
    c = out.comparison
    typer.echo(f"  AUC {c.champion_auc:.4f} -> {c.challenger_auc:.4f}, delta {c.auc_delta.estimate:+.4f} "
               f"[{c.auc_delta.low:+.4f}, {c.auc_delta.high:+.4f}]; logloss {c.champion_logloss:.4f} -> "
               f"{c.challenger_logloss:.4f}, delta {c.logloss_delta.estimate:+.4f} "
               f"[{c.logloss_delta.low:+.4f}, {c.logloss_delta.high:+.4f}]"
               + (f" (MLflow run {out.eval_run_id})" if out.eval_run_id else ""))
    if out.online is not None:
        echo_ab_result(out.online.detail)
    if out.dry_run:
        verdict = "would be promoted" if out.passed else "would be refused:\n  - " + "\n  - ".join(out.reasons)
        typer.echo(f"dry run: {out.model_name} v{version} {verdict} (champion stays v{out.champion_before}; "
                   "nothing was moved or written)")
        raise typer.Exit(0 if out.passed else 1)
    if out.reasons:
        typer.echo("  forced past: " + "; ".join(out.reasons))
    typer.echo(f"{out.model_name} v{version} is now champion (was v{out.champion_before})")


def register(app: typer.Typer) -> None:
    app.command()(promote)
