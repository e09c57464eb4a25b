"""The workspace marker: --fresh deletes only a folder mixrec created (or an empty one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixrec.cli import app
from mixrec.pipelines.errors import BadInput
from mixrec.pipelines.workspace import MARKER_NAME, Workspace

DEMO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


def test_new_or_empty_folder_gets_the_marker(tmp_path):
    assert Workspace(tmp_path / "new").create().marker.is_file()
    (tmp_path / "empty").mkdir()
    assert Workspace(tmp_path / "empty").create().marker.is_file()


def test_foreign_folder_is_used_but_never_marked_nor_deleted(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    ws = Workspace(tmp_path).create()
    assert not ws.marker.exists() and ws.sources_dir.is_dir()
    with pytest.raises(BadInput, match=f"not a mixrec workspace \\(no {MARKER_NAME} file\\)"):
        ws.create(fresh=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_fresh_deletes_a_marked_workspace(tmp_path):
    ws = Workspace(tmp_path / "ws").create()
    (ws.artifacts_dir / "old.json").write_text("{}")
    ws.create(fresh=True)
    assert not (ws.artifacts_dir / "old.json").exists() and ws.marker.is_file()


def test_workspace_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="is a file"):
        Workspace(tmp_path / "f").create()
    with pytest.raises(BadInput, match="not a folder"):
        Workspace(tmp_path / "f").create(fresh=True)


def test_run_fresh_on_a_foreign_folder_exits_2_and_keeps_it(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    result = CliRunner().invoke(app, ["run", str(DEMO_CONFIG), "--fresh", "--workspace", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --fresh: {tmp_path} is not a mixrec workspace (no {MARKER_NAME} "
                                     f"file); refusing to delete it: remove it yourself or choose another --workspace")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]
