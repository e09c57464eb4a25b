"""The pipeline's verbs: ``run``, ``submit``, ``jobs``, ``rollback``, ``models``. Each parses, calls one
function, prints; :func:`register` adds them to the root command (``mixrec.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_args import ConfigOpt, WorkspaceOpt, cli_config, tracking_config
from .config import PipelineConfig
from .errors import RunFailed

AddressOpt = Annotated[str, typer.Option("--address", envvar="RAY_JOBS_ADDRESS",
                                         help="Ray dashboard / Jobs API address, e.g. http://127.0.0.1:8265")]


def run_and_report(cfg: PipelineConfig, fresh: bool):
    """Run the pipeline with progress on stdout and a one-line summary of what was registered."""
    from .run import run_pipeline

    result = run_pipeline(cfg, fresh=fresh, progress=typer.echo)
    typer.echo(f"registered {result.model_name} v{result.version} (aliases: {', '.join(result.aliases) or '-'}); "
               f"test AUC {result.metrics['test_auc']:.4f}, logloss {result.metrics['test_logloss']:.4f}")
    return result


def run(config: Annotated[Path, typer.Argument(help="pipeline config YAML")],
        fresh: Annotated[bool, typer.Option("--fresh", help="delete the workspace first")] = False,
        workspace: WorkspaceOpt = None) -> None:
    """Run the pipeline (generate -> ... -> register) from a config file."""
    run_and_report(cli_config(config, workspace), fresh)


def rollback(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
             reason: Annotated[str, typer.Option(help="why (recorded as a tag)")] = "rollback") -> None:
    """Move `champion` back to the version it pointed at before its last move."""
    from .registry import rollback as rollback_champion

    cfg = tracking_config(config, workspace)
    mv = rollback_champion(cfg.registry.model_name, reason=reason)
    typer.echo(f"{mv.name} v{mv.version} is champion again (aliases: {', '.join(mv.aliases)})")


def submit(config: Annotated[Path, typer.Argument(help="pipeline config YAML")], address: AddressOpt,
           wait: Annotated[bool, typer.Option("--wait", help="follow until the job ends; exit 1 unless it succeeded")] = False
           ) -> None:
    """Submit the pipeline to a Ray cluster as a Ray Job; prints the job id."""
    from . import jobs

    job_id = jobs.submit(config, address)
    typer.echo(job_id)
    if wait:
        final = jobs.wait(address, job_id, progress=lambda s: typer.echo(f"  {s}", err=True))
        if final != "SUCCEEDED":
            typer.echo(jobs.logs(address, job_id)[-4000:], err=True)
            raise RunFailed(f"Ray Job {job_id} ended {final} (its log's tail is above)")


jobs_app = typer.Typer(no_args_is_help=True, help="Ray Jobs on a cluster: list, status, logs, stop.")


@jobs_app.command("list")
def jobs_list(address: AddressOpt) -> None:
    from . import jobs

    for j in jobs.list_jobs(address):
        typer.echo(f"{j['job_id']:<28}{j['status']:<12}{j['entrypoint']}")


@jobs_app.command("status")
def jobs_status(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo(jobs.status(address, job_id))


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo(jobs.logs(address, job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo("stopped" if jobs.stop(address, job_id) else "not running")


def models() -> None:
    """The model zoo: name, parameters, MFLOPs per example at the default size."""
    from mixrec.models import model_summary_table

    typer.echo(f"{'model':<24}{'parameters':>14}{'MFLOPs/example':>16}")
    for row in model_summary_table():
        typer.echo(f"{row.name:<24}{row.parameters:>14,}{row.mflops_per_example:>16.3f}")


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(rollback)
    app.command()(submit)
    app.add_typer(jobs_app, name="jobs")
    app.command()(models)
