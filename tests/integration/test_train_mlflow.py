"""Ray Train logs to MLflow natively from rank 0 (Train V2 has no MLflow callback): per-epoch metrics and,
with ``log_checkpoints: every_epoch``, each epoch's checkpoint as an artifact of the training run."""

from __future__ import annotations

import mlflow
import pytest

from mixrec.pipelines.checkpoint import load_checkpoint
from mixrec.pipelines.config import TrainConfig
from mixrec.pipelines.train import epoch_line, train

pytestmark = pytest.mark.integration


def test_rank0_logs_epoch_metrics_and_checkpoints(ray_session, tiny_training_data, tmp_path):
    pre, prepared = tiny_training_data(ray_session, num_events=3000, seed=13)  # the zoo tests' data: made once
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("train-logging", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    cfg = TrainConfig(num_workers=2, epochs=2, batch_size=512, log_checkpoints="every_epoch")

    epochs = []  # rank 0's reports, relayed to the driver while training runs (the CLI's epoch lines)
    outcome = train(prepared["train"], prepared["valid"], pre, "dnn", {}, cfg, tmp_path / "ray", run_name="logged",
                    tracking_uri=uri, mlflow_run_id=run_id, on_epoch=epochs.append)

    history = client.get_metric_history(run_id, "valid_auc")
    assert [m.step for m in history] == [0, 1]
    assert [e["epoch"] for e in epochs] == [0, 1] and [e["valid_auc"] for e in epochs] == [m.value for m in history]
    assert epoch_line(epochs[1], 2).startswith("epoch 2/2: train loss ") and "samples/s" in epoch_line(epochs[1], 2)
    assert all(e["train_global_samples_per_s"] > 0 for e in epochs)  # every worker's rows per second
    assert history[-1].value == pytest.approx(outcome.last_metrics["valid_auc"])
    logged = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    assert logged == ["checkpoints/epoch-000", "checkpoints/epoch-001"]
    model, _, spec = load_checkpoint(client.download_artifacts(run_id, "checkpoints/epoch-001", str(tmp_path / "dl")))
    assert spec["name"] == "dnn" and model.num_parameters() > 0


def test_pipeline_run_logs_dataset_inputs_plots_and_a_version_description(served):
    """The MLflow UI tells the story of a run: the Parquet splits as dataset inputs (source, digest, schema),
    the ROC / calibration / training-curve figures, and the registered version's description."""
    result = served["second"]
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
              for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    for dataset in inputs.values():
        assert len(dataset.digest) == 32 and dataset.source_type == "local"
        assert "prepared" in dataset.source and '"categorical"' in dataset.schema
    assert inputs["training"].digest != inputs["testing"].digest
    plots = {f.path for f in client.list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/roc.png", "plots/calibration.png", "plots/training_curve.png"}
    (train_run,) = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
                                      search_all_experiments=True, output_format="list")
    assert {i.dataset.digest for i in train_run.inputs.dataset_inputs} == {inputs["training"].digest,
                                                                          inputs["validation"].digest}
    assert [f.path for f in client.list_artifacts(train_run.info.run_id, "plots")] == ["plots/training_curve.png"]
    description = client.get_model_version(result.model_name, result.version).description
    assert f"`{result.run_id}`" in description and f"test AUC {result.metrics['test_auc']:.4f}" in description
    assert "**Gate:** not evaluated yet: `mixrec promote 2`" in description
    first = client.get_model_version(result.model_name, served["first"].version).description
    assert "first version of the model is champion" in first
