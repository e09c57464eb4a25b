"""Ray Train fault tolerance: a worker killed by PID once the step-k checkpoint of an epoch is reported is
replaced, training resumes from the last checkpoint reported before the kill (in the same epoch, the trained
batches skipped) and finishes, with validation metrics within noise of an uninterrupted run of the same seed.

The workers run ahead of the controller (reports are queued), so the old group may report a later checkpoint
(step k+5, or the epoch's end) before the kill lands: the test asserts the guarantee, "resume from the last
checkpoint reported before the restart", not a fixed step."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
from ray.train import UserCallback

from mixrec.pipelines.config import TrainConfig
from mixrec.pipelines.train import train

pytestmark = pytest.mark.integration

KILL_EPOCH, KILL_STEP = 1, 10


def test_worker_killed_mid_epoch_is_replaced_and_training_resumes_from_the_step(ray_session, tiny_training_data,
                                                                               tmp_path):
    pre, prepared = tiny_training_data(ray_session, num_events=6000, seed=17)
    data = [prepared["train"], prepared["valid"]]
    # ~2,400 train rows per worker at 128 each (global batch 256): 19 steps per epoch, a checkpoint every 5.
    cfg = TrainConfig(num_workers=2, epochs=3, batch_size=256, seed=3, checkpoint_every_steps=5)

    class KillWorkerAtStep(UserCallback):  # defined here: cloudpickle ships it by value
        """Runs on the Train controller: records every report; after the step-k checkpoint of epoch 1 is
        reported, SIGKILLs rank 1 once."""

        def __init__(self, record):
            self.record, self.killed, self.reports = record, None, []

        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]
            self.reports.append({k: m.get(k) for k in ("epoch", "step", "resumed_from_step", "worker_pid")})
            if self.killed is None and m["epoch"] == KILL_EPOCH and m["step"] == KILL_STEP:
                self.killed = [r["worker_pid"] for r in metrics]
                os.kill(self.killed[1], signal.SIGKILL)
            self.record.write_text(json.dumps({"killed": self.killed, "reports": self.reports}))

    clean = train(*data, pre, "dnn", {}, cfg, tmp_path, run_name="clean")
    record = tmp_path / "killed.json"
    recovered = train(*data, pre, "dnn", {}, cfg, tmp_path, run_name="killed", callbacks=[KillWorkerAtStep(record)])

    log = json.loads(record.read_text())
    assert log["killed"], "the worker was never killed: no step-10 report in epoch 1"
    assert recovered.metrics["epoch"] == clean.metrics["epoch"] == 2
    assert recovered.metrics["worker_pid"] not in log["killed"], "the worker group was not replaced"
    reports = log["reports"]
    restart = next(i for i, r in enumerate(reports) if r["worker_pid"] not in log["killed"])
    last = reports[restart - 1]  # the last checkpoint the old group reported (every report carries one)
    assert (last["epoch"], last["step"]) >= (KILL_EPOCH, KILL_STEP)
    resumed = reports[restart:]
    if last["resumed_from_step"] is None:  # a mid-epoch checkpoint: the epoch resumes after its last step
        epoch_end = next(r for r in resumed if r["epoch"] == last["epoch"] and r["resumed_from_step"] is not None)
        assert epoch_end["resumed_from_step"] == last["step"]
        assert all(r["epoch"] == last["epoch"] and r["step"] > last["step"] for r in resumed
                   if r["resumed_from_step"] is None and r["epoch"] == last["epoch"])
    else:  # the epoch's end was checkpointed first: the new group starts the next epoch from its first batch
        assert resumed[0]["epoch"] == last["epoch"] + 1
        assert all(r["epoch"] > last["epoch"] for r in resumed)
    assert recovered.metrics["step"] == clean.metrics["step"]  # the same batches per epoch after the restart
    assert abs(recovered.metrics["valid_auc"] - clean.metrics["valid_auc"]) < 0.05
    assert abs(recovered.metrics["valid_logloss"] - clean.metrics["valid_logloss"]) < 0.05
    assert not math.isnan(recovered.metrics["valid_auc"])  # the best checkpoint is an evaluated one
