"""serve.json: what a running server recorded in its workspace (URL, application, arms, Ray address and auth
mode, and the resolved plan it was built from), read by the processes that join it later (`mixrec query`,
`mixrec ab set-weights`). Imports no Ray: a joining process must take the auth mode before Ray is first
imported. Written owner-only: the plan holds the tracking URI and the token's digest."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from mixrec.features.io import write_json_atomic
from mixrec.pipelines.errors import Unreachable
from mixrec.pipelines.workspace import Workspace


class ServerUnreachable(Unreachable):
    """No server is recorded in the workspace, or the Ray instance it recorded does not answer."""


def record_state(ws: Workspace, url: str, plan) -> None:
    """Write serve.json for the application just deployed (``plan``: its ResolvedServe), with the Ray instance
    that serves it."""
    import ray

    write_json_atomic({"url": url, "app_name": plan.serve.app_name, "arms": plan.arms, "weights": plan.weights,
                       "ray_address": ray.get_runtime_context().gcs_address,
                       "ray_auth_mode": os.environ.get("RAY_AUTH_MODE"), "plan": plan.to_args()}, ws.serve_state)
    os.chmod(ws.serve_state, 0o600)


def running_state(ws: Workspace, connect_timeout_s: float = 3.0) -> dict:
    """serve.json of the server to act on, after checking that its Ray instance accepts connections (a dead
    address would make ``ray.init`` retry for minutes); raises :class:`ServerUnreachable`."""
    state = recorded_state(ws)
    if not state or "plan" not in state:
        raise ServerUnreachable(f"no running server recorded in {ws.serve_state}: start one with `mixrec serve`")
    host, _, port = str(state.get("ray_address") or "").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=connect_timeout_s).close()
    except (OSError, ValueError):
        raise ServerUnreachable(f"the Ray instance recorded in {ws.serve_state} ({state.get('ray_address')}) does "
                                "not answer: is `mixrec serve` still running?") from None
    return state


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
