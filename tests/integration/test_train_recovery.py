"""Ray Train fault tolerance: a worker killed by PID mid-run is replaced, training resumes from the latest
checkpoint and finishes, with validation metrics within noise of an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import signal

import pytest
from ray.train import UserCallback

from mixrec.pipelines.config import TrainConfig
from mixrec.pipelines.train import train

pytestmark = pytest.mark.integration


def test_killed_worker_is_replaced_and_training_resumes(ray_session, tiny_training_data, tmp_path):
    pre, prepared = tiny_training_data(ray_session, num_events=6000, seed=17)
    data = [prepared["train"], prepared["valid"]]
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
