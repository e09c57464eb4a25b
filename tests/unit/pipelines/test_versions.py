"""`mixrec versions` on a real MLflow registry (sqlite in a temporary workspace): aliases, test metrics, gate
results and lineage of every version, as a table and as JSON."""

from __future__ import annotations

import json

import mlflow
import pytest
from typer.testing import CliRunner

from mixrec.cli import app
from mixrec.pipelines import registry
from mixrec.pipelines.config import PipelineConfig
from mixrec.pipelines.workspace import Workspace

MODEL = PipelineConfig().registry.model_name


@pytest.fixture
def registry_with_versions(tmp_path):
    """v1 champion (metrics, lineage), v2 challenger gated against v1; the tracking URI restored after."""
    previous = mlflow.get_tracking_uri()
    ws = Workspace(tmp_path / "ws").create()
    registry.setup_tracking(None, PipelineConfig().registry.experiment, ws)
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL)
    for auc, logloss in ((0.71, 0.52), (0.73, 0.50)):
        with mlflow.start_run() as run:
            mlflow.log_metrics({"test_auc": auc, "test_logloss": logloss, "valid_auc": 0.7})
        client.create_model_version(MODEL, source=str(tmp_path), run_id=run.info.run_id, tags={
            "model": "rankmixer", "lineage.dataset_sha256": "ab" * 32, "lineage.schema_sha256": "cd" * 32,
            "lineage.feast_feature_service": "ranker_features", "lineage.config": json.dumps({"model": {"name": "x"}})})
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    for key, value in {"gate.offline_passed": "True", "gate.against_champion": "1", "gate.auc_delta": "+0.02000",
                       "gate.ab_passed": "False"}.items():
        client.set_model_version_tag(MODEL, "2", key, value)
    yield ws
    mlflow.set_tracking_uri(previous)


def test_versions_json_lists_aliases_metrics_gate_and_lineage(registry_with_versions):
    result = CliRunner().invoke(app, ["versions", "--json", "--workspace", str(registry_with_versions.root)])
    assert result.exit_code == 0, result.output
    v2, v1 = json.loads(result.output)
    assert (v2["version"], v2["aliases"], v1["version"], v1["aliases"]) == ("2", ["challenger"], "1", ["champion"])
    assert v2["test_metrics"] == {"test_auc": 0.73, "test_logloss": 0.50}
    assert v2["gate"] == {"offline_passed": "True", "against_champion": "1", "auc_delta": "+0.02000", "ab_passed": "False"}
    assert v1["gate"] == {} and v1["model"] == "rankmixer"
    assert v1["lineage"]["config"] == {"model": {"name": "x"}} and v1["lineage"]["dataset_sha256"] == "ab" * 32


def test_versions_table(registry_with_versions):
    result = CliRunner().invoke(app, ["versions", "--workspace", str(registry_with_versions.root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row2 = next(ln for ln in lines if ln.strip().startswith("2 "))
    assert "challenger" in row2 and "0.7300" in row2 and "0.5000" in row2
    assert "offline passed, AUC +0.02000 vs v1; A/B refused" in row2
    assert any(ln.strip().startswith("data abababababab  schema cdcdcdcdcdcd  features ranker_features") for ln in lines)


def test_versions_of_an_unknown_model_is_exit_2(registry_with_versions, tmp_path):
    cfg = tmp_path / "other.yaml"
    cfg.write_text("registry: {model_name: nope}\n")
    result = CliRunner().invoke(app, ["versions", "-c", str(cfg), "-w", str(registry_with_versions.root)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no registered model 'nope'; registered models: ['{MODEL}']"


def test_models_json():
    result = CliRunner().invoke(app, ["models", "--json"])
    rows = json.loads(result.output)
    assert {"rankmixer", "dnn"} <= {r["name"] for r in rows}
    assert all(r["parameters"] > 0 and r["mflops_per_example"] > 0 for r in rows)
