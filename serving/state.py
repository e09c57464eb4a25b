"""serve.json: what a running server recorded in its workspace (URL, application, arms, Ray address and auth
mode), read by the processes that join it later (`mixrec query`, `mixrec ab set-weights`). Imports no Ray: a
joining process must take the auth mode before Ray is first imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixrec.features.io import write_json_atomic
from mixrec.pipelines.workspace import Workspace


def record_state(ws: Workspace, url: str, app_name: str, arms: dict[str, str], weights: dict[str, float]) -> None:
    """Write serve.json for the application just deployed, with the Ray instance that serves it."""
    import ray

    write_json_atomic({"url": url, "app_name": app_name, "arms": arms, "weights": weights,
                       "ray_address": ray.get_runtime_context().gcs_address,
                       "ray_auth_mode": os.environ.get("RAY_AUTH_MODE")}, ws.serve_state)


def recorded_state(workspace: Workspace | Path | str | None) -> dict | None:
    """The workspace's serve.json, or None when no server recorded one."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    return json.loads(ws.serve_state.read_text()) if ws.serve_state.exists() else None


def join_recorded_ray(workspace: Workspace | Path | str | None) -> str | None:
    """The Ray address the workspace's server recorded (None: none recorded), after taking its Ray auth mode:
    Ray 2.60 enables token auth on a new local cluster but not in a process that joins it by address, and
    reads the mode once, when ray is first imported. So call this before anything imports ray."""
    state = recorded_state(workspace) or {}
    if state.get("ray_auth_mode"):
        os.environ.setdefault("RAY_AUTH_MODE", state["ray_auth_mode"])
    return state.get("ray_address")
