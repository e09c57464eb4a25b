"""Ray Train fault tolerance: a worker killed by PID mid-run is replaced, training resumes from the latest
checkpoint and finishes, with validation metrics within noise of an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import signal

import pytest
from ray.train import UserCallback

from mixrec.features.schema import SYNTHETIC_SCHEMA as SCHEMA
from mixrec.features.synthetic import generate
from mixrec.pipelines.config import TrainConfig
from mixrec.pipelines.preprocess import fit_preprocessor
from mixrec.pipelines.train import train

pytestmark = pytest.mark.integration


def test_killed_worker_is_replaced_and_training_resumes(ray_session, tmp_path):
    t = generate(num_events=6000, num_users=100, num_items=60, days=3, seed=17)
    rows = t.events.merge(t.users.drop_duplicates("user_id"), on="user_id", suffixes=("", "_u")).merge(
        t.items, on="item_id", suffixes=("", "_i"))
    ds = ray_session.data.from_pandas(rows[list(SCHEMA.required_columns)])
    train_ds, valid_ds = ds.split_proportionately([0.8])
    pre = fit_preprocessor(train_ds, SCHEMA, min_count=1, clip_sigma=5.0)
    data = [d.map_batches(pre.transform_batch, batch_format="pandas").materialize() for d in (train_ds, valid_ds)]
    cfg = TrainConfig(num_workers=2, epochs=3, batch_size=128, seed=3)

    class KillWorkerAfterFirstEpoch(UserCallback):  # defined here: cloudpickle ships it by value
        """Runs on the Train controller: after epoch 0 is reported (and checkpointed), SIGKILL rank 1 once."""

        def __init__(self, record):
            self.record, self.killed = record, False

        def after_report(self, run_context, metrics, checkpoint):
            if not self.killed and metrics[0]["epoch"] == 0:
                self.killed = True
                pids = [m["worker_pid"] for m in metrics]
                self.record.write_text(json.dumps(pids))
                os.kill(pids[1], signal.SIGKILL)

    clean = train(*data, pre, "dnn", {}, cfg, tmp_path, run_name="clean")
    record = tmp_path / "killed.json"
    recovered = train(*data, pre, "dnn", {}, cfg, tmp_path, run_name="killed",
                      callbacks=[KillWorkerAfterFirstEpoch(record)])

    assert recovered.metrics["epoch"] == clean.metrics["epoch"] == 2
    first_group = json.loads(record.read_text())  # [rank 0 pid, rank 1 pid] when rank 1 was killed
    assert recovered.metrics["worker_pid"] not in first_group, "the worker group was not replaced"
    assert abs(recovered.metrics["valid_auc"] - clean.metrics["valid_auc"]) < 0.05
    assert abs(recovered.metrics["valid_logloss"] - clean.metrics["valid_logloss"]) < 0.05
