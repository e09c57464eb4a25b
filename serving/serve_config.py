"""The Serve config file of a workspace: the A/B application as Ray Serve's own deploy config, for
``serve run FILE`` (a local Ray) or ``serve deploy FILE`` (a running cluster's dashboard address).

The application is ``import_path: mixrec.serving.app:app_builder`` with the resolved settings as its ``args``
(:meth:`~mixrec.serving.resolved.ResolvedServe.to_args`): the versions the aliases pointed at when the file
was written, the tracking URI, workspace, schema and token digest. A deploy from the file serves exactly those
versions; after ``mixrec promote`` write the file again. Writing it starts no Ray.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mixrec.features.io import write_text_atomic
from mixrec.pipelines.runtime import QUIET_ENV

from .resolved import ResolvedServe

IMPORT_PATH = "mixrec.serving.app:app_builder"


def serve_config(plan: ResolvedServe) -> dict:
    """Ray Serve's deploy config (``ServeDeploySchema``, validated) of the plan's application: the HTTP proxy
    on ``serve.host:serve.port``, one application under ``serve.app_name`` at ``serve.route_prefix``."""
    from ray.serve.schema import ServeDeploySchema

    s = plan.serve
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": s.host, "port": s.port},
        "applications": [{"name": s.app_name, "route_prefix": s.route_prefix, "import_path": IMPORT_PATH,
                          "runtime_env": {"env_vars": dict(QUIET_ENV)}, "args": plan.to_args()}],
    }
    ServeDeploySchema.model_validate(config)
    return config


def write_serve_config(plan: ResolvedServe, path: Path | None = None) -> Path:
    """Write the plan's Serve config file atomically to ``path`` (default: the workspace's
    ``serve_config.yaml``); returns the path. ``plan``: ``server.resolve_serve`` (aliases resolved now)."""
    path = Path(path) if path else plan.workspace.serve_config
    header = (f"# Ray Serve config of mixrec's A/B application {plan.serve.app_name!r} ({plan.model_name}: "
              + ", ".join(f"{arm} v{v}" for arm, v in plan.arms.items()) + ").\n"
              f"#   serve run {path}        # a local Ray (blocks; Ctrl-C stops)\n"
              f"#   serve deploy {path}     # a running Ray cluster (RAY_DASHBOARD_ADDRESS)\n"
              "# The versions are pinned: after `mixrec promote`, write it again (`mixrec serve --write-config`).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(header + yaml.safe_dump(serve_config(plan), sort_keys=False), path)
    return path
