"""What every package's command-line verbs share: the --config and --workspace options, loading the config
they name. Errors are raised as :mod:`.errors` types; the root command prints them (``mixrec.cli.errors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from .config import PipelineConfig, load_config, parse_config
from .errors import BadInput

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="pipeline config YAML (default: built-in)")]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w",
                                                   help="workspace folder (default $MIXREC_HOME or ./mixrec-workspace)")]


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
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, Workspace.resolve(cfg.workspace))
    return cfg
