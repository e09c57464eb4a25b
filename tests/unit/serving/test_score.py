"""Batch scoring's input checks and model rows (no Ray, no Feast): bad input is one line naming the file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mixrec.cli import app
from mixrec.features.dataset import load_dataset_spec
from mixrec.features.schema import SYNTHETIC_SCHEMA
from mixrec.serving.score import ScoreError, check_input, input_files, model_frame, required_columns

CANDIDATES = pd.DataFrame({"event_id": [1, 2], "user_id": [3, 4], "item_id": [5, 6], "device": [0, 1],
                           "hour": [9, 10], "extra": ["a", "b"]})


def test_candidates_need_the_keys_and_the_request_fields_only():
    assert required_columns(SYNTHETIC_SCHEMA) == ["user_id", "item_id", "device", "hour"]
    criteo = load_dataset_spec("configs/datasets/criteo.yaml").to_schema()  # row features only: all of them
    assert required_columns(criteo) == list(criteo.model_columns)


def test_files_and_folders_are_checked_before_scoring(tmp_path):
    CANDIDATES.to_parquet(tmp_path / "a.parquet")
    CANDIDATES.drop(columns="event_id").to_parquet(tmp_path / "b.parquet")
    (tmp_path / ".hidden.csv").write_text("x\n1\n")
    fmt, files = input_files(tmp_path)
    assert fmt == "parquet" and [p.name for p in files] == ["a.parquet", "b.parquet"]
    assert check_input(fmt, files, SYNTHETIC_SCHEMA) == ["user_id", "item_id"]  # keys every file has
    assert check_input(fmt, files[:1], SYNTHETIC_SCHEMA) == ["event_id", "user_id", "item_id"]


@pytest.mark.parametrize("case, match", [
    ("missing", "input not found"),
    ("column", r"c.csv: missing column\(s\) \['hour'\]"),
    ("corrupt", "d.parquet: not a readable parquet file"),
    ("suffix", "e.txt: not a .parquet or .csv file"),
    ("mixed", r"needs .parquet or .csv files of one format, found \['csv', 'parquet'\]"),
])
def test_bad_input_names_the_file_and_the_problem(tmp_path, case, match):
    path = tmp_path / "in"
    path.mkdir()
    if case == "column":
        CANDIDATES.drop(columns="hour").to_csv(path / "c.csv", index=False)
    elif case == "corrupt":
        (path / "d.parquet").write_bytes(b"PAR1 not really")
    elif case == "suffix":
        path = path / "e.txt"
        path.write_text("x")
    elif case == "mixed":
        CANDIDATES.to_csv(path / "a.csv", index=False)
        CANDIDATES.to_parquet(path / "b.parquet")
    elif case == "missing":
        path = path / "nothing.parquet"
    with pytest.raises(ScoreError, match=match):
        check_input(*input_files(path), SYNTHETIC_SCHEMA)


def test_the_verb_answers_bad_input_with_one_line_and_exit_2(tmp_path):
    CANDIDATES.drop(columns="item_id").to_csv(tmp_path / "c.csv", index=False)
    result = CliRunner().invoke(app, ["score", str(tmp_path / "c.csv"), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'c.csv'}: missing column(s) ['item_id']; scoring needs "
        "['user_id', 'item_id', 'device', 'hour']"]
    assert not (tmp_path / "ws").exists()  # failed before MLflow or Ray


def test_row_feature_models_score_their_own_columns_without_a_feature_store():
    criteo = load_dataset_spec("configs/datasets/criteo.yaml").to_schema()
    batch = pd.DataFrame({c: ["7", None] if f.kind != "dense" else ["1.5", None]
                          for f in criteo.fields for c in [f.name]})
    frame = model_frame(criteo, batch, store=None)
    assert list(frame.columns) == list(criteo.model_columns) and len(frame) == 2
    dense = criteo.dense[0].name
    np.testing.assert_array_equal(frame[dense].to_numpy(), [1.5, np.nan])
