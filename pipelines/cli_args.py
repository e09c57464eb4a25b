"""What every package's command-line verbs share: the --config and --workspace options, loading the config
they name. Errors are raised as :mod:`.errors` types; the root command prints them (``mixrec.cli.errors``)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from .config import PipelineConfig, load_config, parse_config
from .errors import BadInput

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="pipeline config YAML (default: built-in)")]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w",
                                                   help="workspace folder (default $MIXREC_HOME or ./mixrec-workspace)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout (progress goes to stderr)")]
DashboardOpt = Annotated[bool, typer.Option("--dashboard", help="also start the Ray dashboard (127.0.0.1 only)")]


def echo_json(obj: Any) -> None:
    """``obj`` as one JSON document on stdout; NumPy values as plain ones, NaN and infinities as null (JSON has
    neither)."""

    def clean(o: Any) -> Any:
        if hasattr(o, "tolist") and hasattr(o, "ndim"):  # a NumPy scalar or array
            o = o.tolist()
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    typer.echo(json.dumps(clean(obj), indent=2, default=str))


@contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """With ``--json``, stdout carries the JSON document alone: while the verb runs, everything printed to
    stdout (its progress, libraries that print, such as Feast's materialization, and processes started
    meanwhile, such as Ray's) goes to stderr."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # file descriptor 1 too: what subprocesses inherit and C code writes to
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def start_dashboard(enabled: bool) -> None:
    """``--dashboard``: start the local Ray instance now, with its dashboard on loopback, and say where."""
    if not enabled:
        return
    from .runtime import dashboard_url, init_ray

    init_ray(dashboard=True)
    url = dashboard_url()
    typer.echo(f"Ray dashboard: {url} (Ray token auth: sign in with the token in $RAY_AUTH_TOKEN or "
               f"~/.ray/auth_token)" if url else "Ray dashboard: the joined cluster's own ($RAY_ADDRESS)", err=True)


def fail(message: str) -> NoReturn:
    """Bad input: the root prints ``error: message`` and exits 2."""
    raise BadInput(message)


def cli_config(path: Path | None, workspace: Path | None, overrides: dict | None = None) -> PipelineConfig:
    """The config file (or the built-in defaults) with command-line overrides: ``{section: {key: value}}``
    updates a section, ``--workspace`` replaces the workspace. A bad value raises ConfigError (exit 2)."""
    cfg = load_config(path) if path else PipelineConfig()
    data = cfg.to_dict()
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    if workspace:
        data["workspace"] = str(workspace)
    return parse_config(data, str(path) if path else "(defaults)")


def tracking_config(path: Path | None, workspace: Path | None) -> PipelineConfig:
    """:func:`cli_config`, with MLflow tracking set up for the registry verbs."""
    from .registry import setup_tracking
    from .workspace import Workspace

    cfg = cli_config(path, workspace)
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, Workspace.resolve(cfg.workspace),
                   cfg.registry.lock_uri)
    return cfg
