"""The server's helpers that need no Ray: joining a recorded server, the bearer check, the online gate's reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials

from mixrec.pipelines.config import ConfigError, ServeConfig
from mixrec.pipelines.workspace import Workspace
from mixrec.serving.auth import check_bearer, configured_token_digest, token_digest


def test_importing_the_server_imports_no_ray():
    """A joining process takes the recorded auth mode before Ray is imported: the helper must not import it."""
    code = "import sys, mixrec.serving.server; assert 'ray' not in sys.modules, 'ray imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_join_recorded_ray_takes_the_auth_mode_and_returns_the_address(tmp_path, monkeypatch):
    from mixrec.serving.state import join_recorded_ray

    ws = Workspace(tmp_path)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert join_recorded_ray(ws) is None
    ws.serve_state.write_text(json.dumps({"url": "http://x", "ray_address": "10.0.0.1:6379", "ray_auth_mode": "token"}))
    assert join_recorded_ray(ws) == "10.0.0.1:6379"
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_bearer_check():
    digest = token_digest("s3cret")
    check_bearer(None, None)
    check_bearer(HTTPAuthorizationCredentials(scheme="Bearer", credentials="s3cret"), digest)
    for presented in (None, HTTPAuthorizationCredentials(scheme="Bearer", credentials="wrong")):
        with pytest.raises(HTTPException) as err:
            check_bearer(presented, digest)
        assert err.value.status_code == 401 and err.value.headers == {"WWW-Authenticate": "Bearer"}


def test_configured_token_digest(monkeypatch):
    assert configured_token_digest(ServeConfig()) is None
    serve = ServeConfig(auth_token_env="MIXREC_UNIT_TOKEN")
    monkeypatch.delenv("MIXREC_UNIT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="MIXREC_UNIT_TOKEN is unset"):
        configured_token_digest(serve)
    monkeypatch.setenv("MIXREC_UNIT_TOKEN", "s3cret")
    assert configured_token_digest(serve) == token_digest("s3cret")


def test_online_gate_reasons():
    from mixrec.serving.abanalysis import online_gate_reasons

    def analysis(mismatch: bool, wins: bool, lift=None):
        return SimpleNamespace(srm=SimpleNamespace(mismatch=mismatch, p_value=1e-6), treatment_wins=wins, lift=lift)

    assert online_gate_reasons(analysis(False, True)) == []
    assert "sample-ratio mismatch" in online_gate_reasons(analysis(True, True))[0]
    lift = SimpleNamespace(absolute_lift=-0.01, p_value=0.3)
    assert online_gate_reasons(analysis(False, False, lift)) == [
        "A/B test does not favour the challenger: lift -0.0100, p = 3.00e-01"]
    assert online_gate_reasons(analysis(False, False))[0].endswith("an arm got no traffic")


@pytest.mark.parametrize("weights, problem", [
    (["champion=nan"], "finite"), (["champion=inf", "challenger=1"], "finite"), (["champion=-1"], ">= 0"),
    (["champion=1e308", "challenger=1e308"], "sum overflows"), (["champion=0", "challenger=0"], "not all be 0"),
    (["champion"], "ALIAS=NUMBER")])
def test_set_weights_refuses_bad_weights_with_exit_2_before_any_contact(tmp_path, weights, problem):
    from typer.testing import CliRunner

    from mixrec.cli import app

    result = CliRunner().invoke(app, ["ab", "set-weights", *weights, "--workspace", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and problem in result.output


def test_set_weights_without_a_running_server_exits_3_fast(tmp_path):
    """No serve.json, then one whose Ray address is dead (a stale session): exit 3 naming it, no retry loop."""
    import socket

    from typer.testing import CliRunner

    from mixrec.cli import app

    ws = Workspace(tmp_path)
    run = lambda: CliRunner().invoke(app, ["ab", "set-weights", "champion=1", "--workspace", str(tmp_path)])  # noqa: E731
    ray_before = "ray" in sys.modules and __import__("ray").is_initialized()  # the full suite may have Ray up
    result = run()
    assert result.exit_code == 3 and "no running server recorded" in result.output, result.output
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    ws.serve_state.write_text(json.dumps({"url": "http://127.0.0.1:1/mixrec", "ray_address": dead, "plan": {}}))
    result = run()  # refused by a connect check, before ray.init (which would retry a dead GCS for minutes)
    assert result.exit_code == 3 and f"({dead}) does not answer" in result.output, result.output
    if not ray_before:  # no Ray was started on the way to the refusal
        assert "ray" not in sys.modules or not __import__("ray").is_initialized()
