"""No silent hang: a pipeline whose Train workers would take every CPU of the Ray instance (so Ray Data could
never read a batch for them) is refused before the Feast step, with the settings named."""

from __future__ import annotations

import pytest

from mixrec.pipelines.config import ConfigError, parse_config
from mixrec.pipelines.run import run_pipeline
from mixrec.pipelines.workspace import Workspace


def test_training_that_leaves_ray_data_no_cpu_is_refused_before_the_run(ray_session, tmp_path):
    total = ray_session.cluster_resources()["CPU"]
    cfg = parse_config({"workspace": str(tmp_path / "ws"),
                        "data": {"num_events": 2000, "num_users": 50, "num_items": 40, "days": 3},
                        "train": {"num_workers": 1, "cpus_per_worker": total, "epochs": 1}})
    with pytest.raises(ConfigError, match=r"train\.num_workers × train\.cpus_per_worker") as err:
        run_pipeline(cfg, fresh=True, progress=lambda _: None)
    assert f"{total:g} CPUs" in str(err.value)
    ws = Workspace.resolve(cfg.workspace)
    assert not ws.feast_registry.exists() and not ws.retrieved_dir.exists()  # refused before the Feast step
