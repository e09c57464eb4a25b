"""The root's error convention through the real command: one ``error:`` line, exit 2 / 1 / 3, tracebacks only
with --debug."""

from __future__ import annotations

import socket

import httpx
import pytest
from typer.testing import CliRunner

from mixrec.cli import app, version_line
from mixrec.cli.errors import classify, one_line
from mixrec.pipelines.errors import BadInput, RunFailed, Unreachable


def error_lines(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.startswith("error:")]


@pytest.fixture
def closed_port(free_port) -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


@pytest.fixture
def bad_csv_dataset(tmp_path):
    """A CSV dataset whose dense column holds a word: a data error the adapters find before Ray starts."""
    (tmp_path / "ev.csv").write_text("clicked,device,price\n1,2,3.5\n0,1,cheap\n")
    (tmp_path / "schema.yaml").write_text("name: tiny\nformat: csv\nfiles: {all: ev.csv}\nlabel: clicked\n"
                                          "categorical: [device]\ndense: [price]\nsplit: {policy: random}\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{schema: {tmp_path / 'schema.yaml'}, root: {tmp_path}}}\n")
    return cfg


def test_bad_data_value_is_one_line_naming_file_column_and_value(bad_csv_dataset, tmp_path):
    result = CliRunner().invoke(app, ["run", str(bad_csv_dataset), "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert "ev.csv" in line and "'price'" in line and "'cheap'" in line
    assert "Traceback" not in result.output


def test_debug_lets_the_traceback_through(bad_csv_dataset, tmp_path):
    result = CliRunner().invoke(app, ["--debug", "run", str(bad_csv_dataset), "--workspace", str(tmp_path / "ws")])
    assert isinstance(result.exception, ValueError) and "cheap" in str(result.exception)
    assert error_lines(result) == []


def test_unreachable_server_is_exit_3(closed_port):
    result = CliRunner().invoke(app, ["query", "--user", "1", "--items", "1,2", "--url",
                                      f"http://127.0.0.1:{closed_port}/mixrec", "--timeout", "5"])
    assert result.exit_code == 3, result.output
    [line] = error_lines(result)
    assert f"127.0.0.1:{closed_port}" in line


def test_multi_field_config_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  num_workers: 0\nmodel:\n  nme: x\n")
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: invalid pipeline config {bad}: ")
    assert "train.num_workers" in line and "model.nme" in line


def test_version_names_mixrec_and_its_stack():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == version_line()
    assert result.output.startswith("mixrec 0.") and "ray 2." in result.output and "mlflow 3." in result.output


def test_classify_by_type_and_cause(closed_port):
    assert classify(BadInput("x")) == (2, "x")
    assert classify(RunFailed("y")) == (1, "y")
    assert classify(Unreachable("z")) == (3, "z")
    missing = FileNotFoundError(2, "No such file or directory", "/nope/cfg.yaml")
    assert classify(missing) == (2, "[Errno 2] No such file or directory: '/nope/cfg.yaml'")
    assert classify(PermissionError(13, "Permission denied"))[0] == 2
    assert classify(ValueError("bad value 'q' for field f")) == (2, "bad value 'q' for field f")
    code, message = classify(KeyError("k"))
    assert code == 1 and message.startswith("KeyError: 'k'") and "--debug" in message
    # A real refused connection, wrapped the way MLflow wraps its HTTP client's errors.
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"http://127.0.0.1:{closed_port}/api", timeout=5)
    try:
        raise RuntimeError(f"API request to http://127.0.0.1:{closed_port}/api failed") from refused.value
    except RuntimeError as wrapped:
        code, message = classify(wrapped)
    assert code == 3 and f"127.0.0.1:{closed_port}" in message
    with socket.socket() as s, pytest.raises(ConnectionRefusedError) as raw:
        s.connect(("127.0.0.1", closed_port))
    assert classify(raw.value)[0] == 3


def test_ray_task_error_reports_its_cause():
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("read_csv", "Traceback (most recent call last):\n  ...", ValueError("column 'id': bad"))
    assert classify(wrapped.as_instanceof_cause()) == (2, "column 'id': bad")
    from ray.exceptions import UserCodeException

    try:  # how Ray Data raises a failed map_batches function
        raise UserCodeException("UDF failed") from ValueError("column 'price': not a number")
    except UserCodeException as err:
        assert classify(err) == (2, "column 'price': not a number")


def test_one_line_joins_bullets():
    assert one_line("invalid config x.yaml:\n  - a.b: bad\n  - c: worse\n") == "invalid config x.yaml: a.b: bad; c: worse"
    assert len(one_line("w " * 1000)) == 600
