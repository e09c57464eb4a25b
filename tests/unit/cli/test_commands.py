"""The ``mixrec`` command: every verb and flag users, docs and deployment files rely on, composed at one root."""

from __future__ import annotations

from typer.main import get_command
from typer.testing import CliRunner

from mixrec.cli import app

# verb -> its options and arguments: a contract (README, docs/, infra/ and scripts call these)
VERBS = {
    "ab set-weights": ["--config", "--workspace", "-c", "-w", "WEIGHTS"],
    "abtest simulate": ["--candidates", "--concurrency", "--config", "--expected-weights", "--no-sequential", "--rate", "--requests", "--seed", "--sequential", "--url", "--workspace", "-c", "-w"],
    "demo": ["--epochs", "--events", "--fresh", "--keep-serving", "--model", "--port", "--workspace", "-w"],
    "jobs list": ["--address"],
    "jobs logs": ["--address", "JOB_ID"],
    "jobs status": ["--address", "JOB_ID"],
    "jobs stop": ["--address", "JOB_ID"],
    "models": [],
    "promote": ["--candidates", "--concurrency", "--config", "--data", "--force", "--rate", "--reason", "--requests", "--require-ab", "--seed", "--workspace", "-c", "-w", "VERSION"],
    "query": ["--device", "--file", "--hour", "--items", "--timeout", "--token-env", "--url", "--user", "--workspace", "-f", "-w"],
    "rollback": ["--config", "--reason", "--workspace", "-c", "-w"],
    "run": ["--fresh", "--workspace", "-w", "CONFIG"],
    "score": ["--alias", "--batch-size", "--config", "--output", "--version", "--workers", "--workspace", "-c", "-o", "-w", "PATH"],
    "serve": ["--config", "--port", "--workspace", "-c", "-w"],
    "submit": ["--address", "--wait", "CONFIG"],
    "tune": ["--resume", "STUDY"],
}


def _verbs(command, prefix: str = "") -> dict[str, list[str]]:
    if hasattr(command, "commands"):
        out: dict[str, list[str]] = {}
        for name, sub in command.commands.items():
            out.update(_verbs(sub, f"{prefix} {name}".strip()))
        return out
    options = sorted(o for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts))
    return {prefix: options + [p.name.upper() for p in command.params if p.param_type_name == "argument"]}


def test_every_verb_keeps_its_flags():
    assert _verbs(get_command(app)) == VERBS


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: config file not found: {tmp_path / 'missing.yaml'}"]
    result = CliRunner().invoke(app, ["ab", "set-weights", "champion"])
    assert result.exit_code == 2
    assert "weights must be ALIAS=NUMBER" in result.output and "'champion'" in result.output
