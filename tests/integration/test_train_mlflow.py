"""Ray Train logs to MLflow natively from rank 0 (Train V2 has no MLflow callback): per-epoch metrics and,
with ``log_checkpoints: every_epoch``, each epoch's checkpoint as an artifact of the training run."""

from __future__ import annotations

import mlflow
import pytest

from mixrec.pipelines.checkpoint import load_checkpoint
from mixrec.pipelines.config import TrainConfig
from mixrec.pipelines.train import train

pytestmark = pytest.mark.integration


def test_rank0_logs_epoch_metrics_and_checkpoints(ray_session, tiny_training_data, tmp_path):
    pre, prepared = tiny_training_data(ray_session, num_events=3000, seed=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("train-logging", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    cfg = TrainConfig(num_workers=2, epochs=2, batch_size=512, log_checkpoints="every_epoch")

    outcome = train(prepared["train"], prepared["valid"], pre, "dnn", {}, cfg, tmp_path / "ray", run_name="logged",
                    tracking_uri=uri, mlflow_run_id=run_id)

    history = client.get_metric_history(run_id, "valid_auc")
    assert [m.step for m in history] == [0, 1]
    assert history[-1].value == pytest.approx(outcome.last_metrics["valid_auc"])
    logged = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    assert logged == ["checkpoints/epoch-000", "checkpoints/epoch-001"]
    model, _, spec = load_checkpoint(client.download_artifacts(run_id, "checkpoints/epoch-001", str(tmp_path / "dl")))
    assert spec["name"] == "dnn" and model.num_parameters() > 0
