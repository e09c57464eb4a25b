"""What every package's command-line verbs share: the --config and --workspace options, loading the config
they name, and the error convention (one line on stderr, exit 2 for bad input)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from .config import ConfigError, PipelineConfig, load_config, parse_config

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="pipeline config YAML (default: built-in)")]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w",
                                                   help="workspace folder (default $MIXREC_HOME or ./mixrec-workspace)")]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit 2 (bad input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def cli_config(path: Path | None, workspace: Path | None, overrides: dict | None = None) -> PipelineConfig:
    """The config file (or the built-in defaults) with command-line overrides: ``{section: {key: value}}``
    updates a section, ``--workspace`` replaces the workspace. A bad value fails with the config's message."""
    try:
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
    except ConfigError as err:
        fail(str(err))


def tracking_config(path: Path | None, workspace: Path | None) -> PipelineConfig:
    """:func:`cli_config`, with MLflow tracking set up for the registry verbs."""
    from .registry import setup_tracking
    from .workspace import Workspace

    cfg = cli_config(path, workspace)
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, Workspace.resolve(cfg.workspace),
                   cfg.registry.lock_uri)
    return cfg
