"""``${NAME}`` secrets: filled for use, references again in MLflow params / tags / artifacts and in the
generated feature_store.yaml (which Feast itself fills from the environment)."""

from __future__ import annotations

import json

import mlflow
import pytest

from mixrec.features.schema import SYNTHETIC_SCHEMA
from mixrec.pipelines import registry
from mixrec.pipelines.config import load_config
from mixrec.pipelines.lineage import lineage_tags
from mixrec.pipelines.prepare import write_feature_store_config
from mixrec.pipelines.run import log_config
from mixrec.pipelines.secrets import redact
from mixrec.pipelines.workspace import Workspace

SECRET = "s3cr3t-Pa55word"


@pytest.fixture
def secret_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXREC_TEST_REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("MIXREC_TEST_SHORT", "2")
    path = tmp_path / "team.yaml"
    path.write_text(
        f"workspace: {tmp_path / 'ws'}\n"
        "features:\n"
        "  online_store: {type: redis, connection_string: 'localhost:6379,password=${MIXREC_TEST_REDIS_PASSWORD}'}\n"
        "model: {name: dnn, kwargs: {token: '${MIXREC_TEST_REDIS_PASSWORD}'}}\n"
        "train: {num_workers: ${MIXREC_TEST_SHORT}}\n")
    return load_config(path)


def test_config_holds_the_value_and_its_public_form_the_reference(secret_config):
    assert secret_config.features.online_store["connection_string"] == f"localhost:6379,password={SECRET}"
    public = secret_config.public_dict()
    assert SECRET not in json.dumps(public)
    assert public["features"]["online_store"]["connection_string"] == \
        "localhost:6379,password=${MIXREC_TEST_REDIS_PASSWORD}"
    assert public["train"]["num_workers"] == 2  # a short value is put back only as a whole string
    assert redact("2") == "${MIXREC_TEST_SHORT}" and redact("x2y") == "x2y"


def test_feature_store_yaml_keeps_the_reference_and_feast_fills_it(secret_config):
    from feast.repo_config import load_repo_config

    ws = Workspace.resolve(secret_config.workspace).create()
    path = write_feature_store_config(secret_config, ws)
    assert SECRET not in path.read_text() and "${MIXREC_TEST_REDIS_PASSWORD}" in path.read_text()
    loaded = load_repo_config(ws.feast_repo, path)
    assert loaded.online_store.connection_string == f"localhost:6379,password={SECRET}"


def test_mlflow_params_tags_and_artifacts_hold_no_secret(secret_config, tmp_path):
    previous = mlflow.get_tracking_uri()
    ws = Workspace(tmp_path / "mlflow-ws").create()
    registry.setup_tracking(None, "secrets", ws)
    try:
        with mlflow.start_run() as run:
            public = log_config(secret_config)
            with mlflow.start_run(nested=True) as nested:
                log_config(secret_config, nested=True)
            mlflow.set_tags(lineage_tags([], SYNTHETIC_SCHEMA, "ranker_features", public))  # as run.py tags versions
        client = mlflow.MlflowClient()
        logged = [client.get_run(r.info.run_id).data for r in (run, nested)]
        text = json.dumps([(d.params, d.tags) for d in logged])
        text += mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.json")
        assert "${MIXREC_TEST_REDIS_PASSWORD}" in text and SECRET not in text
        assert logged[1].params["model.token"] == "${MIXREC_TEST_REDIS_PASSWORD}"
    finally:
        mlflow.set_tracking_uri(previous)
