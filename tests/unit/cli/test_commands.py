"""The ``mixrec`` command: every verb and flag users, docs and deployment files rely on, composed at one root."""

from __future__ import annotations

from typer.main import get_command
from typer.testing import CliRunner

from mixrec.cli import app

# verb -> its options and arguments: a contract (README, docs/, infra/ and scripts call these)
VERBS = {
    "ab set-weights": ["--config", "--json", "--workspace", "-c", "-w", "WEIGHTS"],
    "abtest simulate": ["--candidates", "--concurrency", "--config", "--expected-weights", "--json", "--no-sequential", "--rate", "--requests", "--seed", "--sequential", "--url", "--workspace", "-c", "-w"],
    "demo": ["--dashboard", "--epochs", "--events", "--fresh", "--keep-serving", "--model", "--port", "--workspace", "-w"],
    "jobs list": ["--address", "--json"],
    "jobs logs": ["--address", "JOB_ID"],
    "jobs status": ["--address", "--json", "JOB_ID"],
    "jobs stop": ["--address", "--json", "JOB_ID"],
    "models": ["--json"],
    "promote": ["--candidates", "--concurrency", "--config", "--data", "--dry-run", "--force", "--json", "--rate", "--reason", "--requests", "--require-ab", "--seed", "--workspace", "-c", "-w", "VERSION"],
    "query": ["--device", "--file", "--hour", "--items", "--json", "--timeout", "--token-env", "--url", "--user", "--workspace", "-f", "-w"],
    "rollback": ["--config", "--json", "--reason", "--workspace", "-c", "-w"],
    "run": ["--dashboard", "--fresh", "--json", "--workspace", "-w", "CONFIG"],
    "score": ["--alias", "--batch-size", "--config", "--json", "--output", "--version", "--workers", "--workspace", "-c", "-o", "-w", "PATH"],
    "serve": ["--config", "--dashboard", "--port", "--workspace", "--write-config", "-c", "-w"],
    "submit": ["--address", "--wait", "CONFIG"],
    "tune": ["--json", "--resume", "STUDY"],
    "ui": ["--config", "--port", "--workspace", "-c", "-w"],
    "versions": ["--config", "--json", "--workspace", "-c", "-w"],
}
# options of the root command itself
ROOT_OPTIONS = ["--debug", "--verbose", "--version", "-v"]


def _verbs(command, prefix: str = "") -> dict[str, list[str]]:
    if hasattr(command, "commands"):
        out: dict[str, list[str]] = {}
        for name, sub in command.commands.items():
            out.update(_verbs(sub, f"{prefix} {name}".strip()))
        return out
    options = sorted(o for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts))
    return {prefix: options + [p.name.upper() for p in command.params if p.param_type_name == "argument"]}


def test_every_verb_keeps_its_flags():
    root = get_command(app)
    assert _verbs(root) == VERBS
    assert sorted(o for p in root.params for o in p.opts) == ROOT_OPTIONS


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: config file not found: {tmp_path / 'missing.yaml'}"]
    result = CliRunner().invoke(app, ["ab", "set-weights", "champion"])
    assert result.exit_code == 2
    assert "weights must be ALIAS=NUMBER" in result.output and "'champion'" in result.output
