"""The pipeline's verbs: ``run``, ``versions``, ``ui``, ``submit``, ``jobs``, ``rollback``, ``models``. Each
parses, calls one function, prints; :func:`register` adds them to the root command (``mixrec.cli``)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_args import (
    ConfigOpt,
    DashboardOpt,
    JsonOpt,
    WorkspaceOpt,
    cli_config,
    echo_json,
    start_dashboard,
    stdout_to_stderr,
    tracking_config,
)
from .config import PipelineConfig
from .errors import BadInput, RunFailed

AddressOpt = Annotated[str, typer.Option("--address", envvar="RAY_JOBS_ADDRESS",
                                         help="Ray dashboard / Jobs API address, e.g. http://127.0.0.1:8265")]
UI_PORT = 5000  # `mixrec ui`'s default, MLflow's own


def mlflow_links(cfg: PipelineConfig, run_id: str, model_name: str, version: str) -> dict[str, str]:
    """Where the run and the registered version are in the MLflow UI (a tracking server's own UI, else the
    one `mixrec ui` starts), and the command that starts it (empty for a server)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    remote = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if remote else f"http://127.0.0.1:{UI_PORT}"
    experiment = mlflow.get_run(run_id).info.experiment_id
    start = "" if remote else "mixrec ui" + (f" --workspace {cfg.workspace}" if cfg.workspace else "")
    return {"run_id": run_id, "run_url": f"{base}/#/experiments/{experiment}/runs/{run_id}",
            "version_url": f"{base}/#/models/{model_name}/versions/{version}", "ui_command": start}


def echo_where_to_look(links: dict[str, str], endpoint: str | None = None, kept_up: bool = False) -> None:
    """The closing lines of `run` and `demo`: the MLflow run and version, the endpoint and its docs."""
    typer.echo("where to look:")
    start = f"  (start the UI: {links['ui_command']})" if links["ui_command"] else ""
    typer.echo(f"  MLflow run     {links['run_url']}{start}")
    typer.echo(f"  model version  {links['version_url']}")
    if endpoint:
        state = "" if kept_up else "  (stopped with the demo: --keep-serving or `mixrec serve` keeps it up)"
        typer.echo(f"  endpoint       {endpoint}/rank, API docs {endpoint}/docs{state}")


def run_and_report(cfg: PipelineConfig, fresh: bool):
    """Run the pipeline with progress on stdout and a one-line summary of what was registered; returns
    (result, MLflow links)."""
    from .run import run_pipeline
    from .runtime import progress_mode

    result = run_pipeline(cfg, fresh=fresh, progress=typer.echo, mode=progress_mode())
    typer.echo(f"registered {result.model_name} v{result.version} (aliases: {', '.join(result.aliases) or '-'}); "
             f"test AUC {result.metrics['test_auc']:.4f}, logloss {result.metrics['test_logloss']:.4f}")
    return result, mlflow_links(cfg, result.run_id, result.model_name, result.version)


def result_json(result, links: dict[str, str]) -> dict:
    return {"model_name": result.model_name, "version": result.version, "aliases": result.aliases,
            "metrics": result.metrics, "counts": result.counts, "step_seconds": result.step_seconds,
            "workspace": str(result.workspace.root), "mlflow": links}


def run(config: Annotated[Path, typer.Argument(help="pipeline config YAML")],
        fresh: Annotated[bool, typer.Option("--fresh", help="delete the workspace first (only a mixrec workspace)")]
        = False, workspace: WorkspaceOpt = None, as_json: JsonOpt = False, dashboard: DashboardOpt = False) -> None:
    """Run the pipeline (generate -> ... -> register) from a config file."""
    cfg = cli_config(config, workspace)
    with stdout_to_stderr(as_json):
        start_dashboard(dashboard)
        result, links = run_and_report(cfg, fresh)
    if as_json:
        echo_json(result_json(result, links))
    else:
        echo_where_to_look(links)


def versions(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Registered versions, newest first: aliases, test metrics, gate results, lineage."""
    from .versions import gate_summary, list_versions

    cfg = tracking_config(config, workspace)
    found = list_versions(cfg.registry.model_name)
    if as_json:
        echo_json([v.to_dict() for v in found])
        return
    typer.echo(f"{cfg.registry.model_name}:")
    typer.echo(f"{'version':>7}  {'aliases':<22}{'model':<18}{'test AUC':>9}{'logloss':>9}  {'created':<21}gate")
    for v in found:
        m = v.test_metrics
        auc, logloss = (f"{m[k]:.4f}" if k in m else "-" for k in ("test_auc", "test_logloss"))
        typer.echo(f"{v.version:>7}  {', '.join(v.aliases) or '-':<22}{v.model or '-':<18}{auc:>9}{logloss:>9}  "
                   f"{v.created:<21}{gate_summary(v.gate)}")
        lin = v.lineage
        if lin:
            typer.echo(f"{'':>9}data {lin.get('dataset_sha256', '?')[:12]}  schema {lin.get('schema_sha256', '?')[:12]}  "
                       f"features {lin.get('feast_feature_service', '?')}  git {lin.get('git_commit', '-')[:10]}  "
                       f"run {v.run_id or '-'}")


def ui(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
       port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = UI_PORT) -> None:
    """Start the MLflow UI on the workspace's tracking store (127.0.0.1 only) until Ctrl-C."""
    from .registry import tracking_uri_for
    from .workspace import Workspace

    cfg = cli_config(config, workspace)
    ws = Workspace.resolve(cfg.workspace)
    uri = tracking_uri_for(cfg.registry.tracking_uri, ws)
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the tracking server has its own UI: {uri}")
        return
    if uri == ws.mlflow_tracking_uri and not ws.mlflow_db.is_file():
        raise BadInput(f"no MLflow store in the workspace ({ws.mlflow_db}): run `mixrec demo` or `mixrec run` first")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise BadInput(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--default-artifact-root", ws.mlflow_artifacts.as_uri()]
    typer.echo(f"MLflow UI at http://127.0.0.1:{port} on {uri} (Ctrl-C stops)")
    server = subprocess.Popen(cmd)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(30)
        typer.echo("stopped")
        return
    if code != 0:
        raise RunFailed(f"the MLflow UI exited with status {code} (its output is above)")


def rollback(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
             reason: Annotated[str, typer.Option(help="why (recorded as a tag)")] = "rollback",
             as_json: JsonOpt = False) -> None:
    """Move `champion` back to the version it pointed at before its last move."""
    from .registry import rollback as rollback_champion

    cfg = tracking_config(config, workspace)
    mv = rollback_champion(cfg.registry.model_name, reason=reason)
    if as_json:
        echo_json({"model_name": mv.name, "version": mv.version, "aliases": mv.aliases})
    else:
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
def jobs_list(address: AddressOpt, as_json: JsonOpt = False) -> None:
    from . import jobs

    found = jobs.list_jobs(address)
    if as_json:
        echo_json(found)
        return
    for j in found:
        typer.echo(f"{j['job_id']:<28}{j['status']:<12}{j['entrypoint']}")


@jobs_app.command("status")
def jobs_status(job_id: str, address: AddressOpt, as_json: JsonOpt = False) -> None:
    from . import jobs

    status = jobs.status(address, job_id)
    if as_json:
        echo_json({"job_id": job_id, "status": status})
    else:
        typer.echo(status)


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo(jobs.logs(address, job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: AddressOpt, as_json: JsonOpt = False) -> None:
    from . import jobs

    stopped = jobs.stop(address, job_id)
    if as_json:
        echo_json({"job_id": job_id, "stopped": stopped})
    else:
        typer.echo("stopped" if stopped else "not running")


def models(as_json: JsonOpt = False) -> None:
    """The model zoo: name, parameters, MFLOPs per example at the default size."""
    from mixrec.models import model_summary_table

    rows = model_summary_table()
    if as_json:
        echo_json([{"name": r.name, "parameters": r.parameters, "mflops_per_example": r.mflops_per_example}
                   for r in rows])
        return
    typer.echo(f"{'model':<24}{'parameters':>14}{'MFLOPs/example':>16}")
    for row in rows:
        typer.echo(f"{row.name:<24}{row.parameters:>14,}{row.mflops_per_example:>16.3f}")


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(versions)
    app.command()(ui)
    app.command()(rollback)
    app.command()(submit)
    app.add_typer(jobs_app, name="jobs")
    app.command()(models)
