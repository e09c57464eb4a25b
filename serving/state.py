"""serve.json: what a running server recorded in its workspace (URL, arms, Ray address and auth mode), read by
the processes that join it later (`mixrec query`, `mixrec ab set-weights`). Imports no Ray: a joining process
must set the auth mode before Ray is first imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixrec.pipelines.workspace import Workspace


def recorded_state(workspace: Path | str | None) -> dict | None:
    """The workspace's serve.json, or None when no server recorded one."""
    path = Workspace.resolve(workspace).serve_state
    return json.loads(path.read_text()) if path.exists() else None


def join_recorded_auth_mode(workspace: Path | str | None) -> None:
    """Ray 2.60 enables token auth on a new local cluster but not in a process that joins it by address, and
    reads the mode once, when ray is imported: take the mode serve.json recorded, before anything imports ray."""
    mode = (recorded_state(workspace) or {}).get("ray_auth_mode")
    if mode:
        os.environ.setdefault("RAY_AUTH_MODE", mode)
