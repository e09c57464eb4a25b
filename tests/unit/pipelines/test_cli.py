"""The pipeline verbs' refusals and machine-readable output that need no Ray and no server."""

from __future__ import annotations

import json
import socket

from typer.testing import CliRunner

from mixrec.cli import app
from mixrec.pipelines.workspace import Workspace


def test_ui_without_a_store_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["ui", "--workspace", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: no MLflow store in the workspace ({tmp_path.resolve() / 'mlflow.db'}): "
                                     "run `mixrec demo` or `mixrec run` first")


def test_ui_on_a_busy_port_is_exit_2(tmp_path):
    ws = Workspace(tmp_path).create()
    ws.mlflow_db.write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--workspace", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: port {port} on 127.0.0.1 is in use; choose another with --port"


def test_ui_with_a_tracking_server_points_at_its_own_ui(tmp_path):
    cfg = tmp_path / "team.yaml"
    cfg.write_text("registry: {tracking_uri: 'http://mlflow.internal:5000'}\n")
    result = CliRunner().invoke(app, ["ui", "-c", str(cfg)])
    assert result.exit_code == 0
    assert result.output.strip() == "the tracking server has its own UI: http://mlflow.internal:5000"


def test_echo_json_turns_numpy_and_nan_into_json(capsys):
    import numpy as np

    from mixrec.pipelines.cli_args import echo_json

    echo_json({"a": np.float32(0.5), "b": np.int64(3), "c": float("nan"), "d": np.array([1, 2]), "e": np.bool_(True)})
    assert json.loads(capsys.readouterr().out) == {"a": 0.5, "b": 3, "c": None, "d": [1, 2], "e": True}


def test_json_mode_keeps_stdout_for_the_document(tmp_path):
    """A verb's progress, a library's print() and a child process's output go to stderr; the JSON alone to stdout."""
    import subprocess
    import sys

    script = ("import os, subprocess, sys\n"
              "from mixrec.pipelines.cli_args import echo_json, stdout_to_stderr\n"
              "with stdout_to_stderr(True):\n"
              "    print('library noise')\n"
              "    subprocess.run([sys.executable, '-c', 'print(\"child noise\")'], check=True)\n"
              "    os.write(1, b'fd noise\\n')\n"
              "echo_json({'version': '2'})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(proc.stdout) == {"version": "2"}
    assert proc.stderr.split() == ["library", "noise", "child", "noise", "fd", "noise"]
