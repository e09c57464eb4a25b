"""The tracking URI rule: the config's URI, else $MLFLOW_TRACKING_URI as the process started, else the
workspace's sqlite file; a URI that MLflow wrote into the variable during the process never leaks into the
next run. Each case runs in a fresh interpreter, because the variable is read once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from pathlib import Path
import mlflow
from mixrec.pipelines.registry import tracking_uri_for
from mixrec.pipelines.workspace import Workspace
a, b = Workspace(Path(sys.argv[1]) / "a"), Workspace(Path(sys.argv[1]) / "b")
first = tracking_uri_for(None, a)
mlflow.set_tracking_uri(first)  # what setup_tracking does: MLflow 3 also writes $MLFLOW_TRACKING_URI
print(json.dumps({"first": first, "next": tracking_uri_for(None, b), "configured": tracking_uri_for("http://cfg:5000", b),
                  "b": b.mlflow_tracking_uri}))
"""


@pytest.mark.parametrize("env_uri", [None, "http://mlflow.example:5000"])
def test_env_tracking_uri_is_honoured_and_never_leaks(tmp_path, env_uri):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if env_uri:
        env["MLFLOW_TRACKING_URI"] = env_uri
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["configured"] == "http://cfg:5000"  # the config wins over everything
    if env_uri:
        assert got["first"] == got["next"] == env_uri
    else:  # each workspace its own database: the first run's URI (now in the variable) is not reused
        assert got["first"] != got["next"] == got["b"]
        assert got["first"].startswith("sqlite:///") and got["first"].endswith("/a/mlflow.db")
