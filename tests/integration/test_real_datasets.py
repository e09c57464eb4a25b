"""Criteo (the 8k sample, TSV) and Frappe (a subset of the Parquet copies) through the whole pipeline --
ingest, Feast, Ray Data + GX, preprocessing, Ray Train, MLflow registry -- from their schema files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mixrec.pipelines.config import load_config, parse_config
from mixrec.pipelines.run import run_pipeline

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # beside the repository, never in it

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent "
                                 "(Criteo/Frappe samples); nothing to run these datasets on")]


def _run(config: str, tmp_path, **overrides):
    data = load_config(config).to_dict()
    data["workspace"] = str(tmp_path / "ws")
    data["data"]["root"] = str(SHARED_DATA)
    data["train"].update({"num_workers": 1, "epochs": 1, "cpus_per_worker": 1.0})
    data["model"]["kwargs"] = {}
    for section, values in overrides.items():
        data[section].update(values)
    return run_pipeline(parse_config(data, config), fresh=True, progress=lambda _: None)


def _reconciles(result) -> None:
    c = result.counts
    assert c["events"] == c["feast_dropped"] + c["validated"]
    assert c["validated"] == c["accepted"] + c["quarantined"]
    assert c["accepted"] == c["train_rows"] + c["valid_rows"] + c["test_rows"]


def test_criteo_sample_from_its_schema_file(ray_session, tmp_path):
    result = _run("configs/criteo.yaml", tmp_path)
    _reconciles(result)
    assert result.counts["events"] == 8000 and result.counts["feast_dropped"] == 0
    ws = result.workspace
    if result.counts["quarantined"]:
        assert len(pq.read_table(ws.quarantine_dir / "validation.parquet")) == result.counts["quarantined"]
    pre = json.loads((ws.artifacts_dir / "preprocessing.json").read_text())
    assert "C3" in pre["hashed"] and "C6" not in pre["hashed"]  # ~4k distinct ids hashed, 7 kept as a vocabulary
    assert all(isinstance(v, str) for v in pre["vocabularies"]["C6"])
    assert pre["dense_stats"]["I5"]["log1p"]
    assert 0.5 < result.metrics["test_auc"] <= 1.0 and result.version


def test_frappe_subset_from_its_schema_file(ray_session, tmp_path):
    result = _run("configs/frappe.yaml", tmp_path, data={"max_rows": 6000})
    _reconciles(result)
    assert result.counts["events"] == 18000  # 6,000 rows of each of the three files
    assert result.counts["train_rows"] + result.counts["quarantined"] <= 6000
    report = json.loads((result.workspace.artifacts_dir / "validation_report.json").read_text())
    assert report["success"] and report["row_level"]["rows_in"] == result.counts["validated"]
    assert result.metrics["test_auc"] > 0.6 and result.version
