"""Gated promotion and the A/B simulator through the real stack: one tiny pipeline run, extra versions
registered from its checkpoint, Ray Serve over HTTP, MLflow on sqlite.

Versions: v1 = the trained model (dnn, 20,000 events, 1 epoch; test AUC about 0.63); v2 = the same checkpoint
registered again (an A/A twin: identical scores, a distinct served arm); v3 = the same architecture with
re-initialised weights (a ranking no better than random). "Clearly better" below is v1 against v3.

Simulations: 500 requests of 20 candidates each (one impression = the top-ranked item), seed 0, 50/50 split.
Measured (docs/abtest.md): trained vs random CTR 0.278 vs 0.097 (true 0.250 vs 0.085), z = 5.1, p = 3e-7;
the A/A twin p = 0.85. The assertions only need p < 0.05 and p > 0.05 respectively.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mixrec.cli import app
from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
from mixrec.pipelines import lineage, pyfunc, registry
from mixrec.pipelines.config import parse_config
from mixrec.pipelines.promotion import PromotionRefused, gated_promote
from mixrec.pipelines.registry import CHALLENGER, CHAMPION
from mixrec.pipelines.run import run_pipeline
from mixrec.serving.abanalysis import SimulationSpec, analyse
from mixrec.serving.abtest import attach_clicks, plan_requests, read_log, simulate_served

pytestmark = pytest.mark.integration

MODEL = "mixrec-ranker"
AB_REQUESTS = 500


def _config(workspace, port: int) -> dict:
    return {
        "workspace": str(workspace),
        "data": {"num_events": 20000, "num_users": 200, "num_items": 100, "days": 4, "seed": 11},
        "preprocess": {"test_fraction": 0.2},  # 4,000 held-out rows for the offline gate
        "model": {"name": "dnn"},
        "train": {"num_workers": 1, "epochs": 1, "batch_size": 512, "learning_rate": 0.005},
        "registry": {"bootstrap_resamples": 500},
        "serve": {"port": port, "arms": {CHAMPION: 0.5, CHALLENGER: 0.5}, "max_candidates": 50},
    }


def _register_copy(source_version: str, tmp_dir, reinit_seed: int | None, why: str) -> str:
    """Register the checkpoint of ``source_version`` again, optionally with freshly initialised weights."""
    from mixrec.models import FeatureLayout, build_model
    from mixrec.pipelines.checkpoint import read_spec

    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{source_version}", dst_path=str(tmp_dir / "dl"))
    ckpt = tmp_dir / f"ckpt-{why}"
    shutil.copytree(f"{local}/data/checkpoint", ckpt)  # the model's data_path
    if reinit_seed is not None:
        spec = read_spec(ckpt)
        torch.manual_seed(reinit_seed)
        layout = FeatureLayout(cardinalities=tuple(spec["layout"]["cardinalities"]), n_dense=spec["layout"]["n_dense"])
        torch.save(build_model(spec["name"], layout, **spec["kwargs"]).state_dict(), ckpt / "model.pt")
    example = pd.read_parquet(tmp_dir / "holdout.parquet").head(5)[list(schema.model_columns)]
    with mlflow.start_run(run_name=f"register-{why}"):
        return pyfunc.log_and_register(ckpt, example, MODEL, tags={"test.variant": why}).version


@pytest.fixture(scope="module")
def versions(ray_session, tmp_path_factory, free_port):
    workspace = tmp_path_factory.mktemp("ws_promote")
    cfg = parse_config(_config(workspace, free_port()))
    result = run_pipeline(cfg, fresh=True, progress=lambda _: None)
    tmp = tmp_path_factory.mktemp("copies")
    config_file = tmp / "config.yaml"  # for the CLI commands
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    pd.read_parquet(result.workspace.holdout_path).to_parquet(tmp / "holdout.parquet")  # a folder of parts -> a file
    twin = _register_copy("1", tmp, None, "aa-twin")
    random = _register_copy("1", tmp, 1234, "random-init")
    assert (result.version, twin, random) == ("1", "2", "3")
    return {"cfg": cfg, "config_file": str(config_file), "result": result, "trained": "1", "twin": "2", "random": "3"}


def _set_aliases(champion: str, challenger: str) -> None:
    registry.promote(MODEL, champion, reason="test setup")
    registry.move_alias(mlflow.MlflowClient(), MODEL, CHALLENGER, challenger, reason="test setup")


def test_every_version_carries_lineage_tags(versions):
    tags = mlflow.MlflowClient().get_model_version(MODEL, "1").tags
    assert len(tags["lineage.dataset_sha256"]) == 64 and len(tags["lineage.schema_sha256"]) == 64
    assert tags["lineage.schema_sha256"] == lineage.schema_digest(schema)
    assert tags["lineage.feast_feature_service"] == "ranker_features"
    assert json.loads(tags["lineage.config"]) == json.loads(json.dumps(versions["cfg"].to_dict()))
    expected_commit = lineage.git_commit(Path(lineage.__file__).parent)  # None outside a git checkout
    assert tags.get("lineage.git_commit") == expected_commit


def test_offline_gate_refuses_a_random_model_force_overrides_rollback_restores(versions):
    _set_aliases(champion=versions["trained"], challenger=versions["random"])
    with pytest.raises(PromotionRefused, match="AUC delta"):
        gated_promote(versions["cfg"], versions["random"], progress=lambda _: None)
    client = mlflow.MlflowClient()
    assert registry.resolve_alias(MODEL, CHAMPION) == versions["trained"]
    tags = client.get_model_version(MODEL, versions["random"]).tags
    assert tags["gate.offline_passed"] == "False"
    run = mlflow.get_run(tags["gate.eval_run_id"])
    assert run.data.metrics["auc_delta_high"] < 0 and run.data.params["champion_version"] == versions["trained"]

    out = gated_promote(versions["cfg"], versions["random"], force=True, reason="drill", progress=lambda _: None)
    assert out.promoted and out.reasons and registry.resolve_alias(MODEL, CHAMPION) == versions["random"]
    assert "FORCED" in client.get_model_version(MODEL, versions["random"]).tags["alias.champion.reason"]

    result = CliRunner().invoke(app, ["rollback", "--config", versions["config_file"], "--reason", "drill over"])
    assert result.exit_code == 0, result.output
    assert f"v{versions['trained']} is champion again" in result.output
    assert registry.alias_log(client, MODEL)[-1]["reason"] == f"drill over (from v{versions['random']})"


def test_require_ab_promotes_a_clearly_better_challenger(versions):
    """Champion = random weights, challenger = trained: the offline gate passes, and 500 simulated
    requests through the served splitter show the trained arm winning with p < 0.05."""
    _set_aliases(champion=versions["random"], challenger=versions["trained"])
    result = CliRunner().invoke(app, ["promote", versions["trained"], "--require-ab", "--config",
                                      versions["config_file"], "--requests", str(AB_REQUESTS), "--rate", "400"])
    assert result.exit_code == 0, result.output
    assert f"v{versions['trained']} is now champion (was v{versions['random']})" in result.output
    assert "challenger wins" in result.output and "SRM" in result.output
    tags = mlflow.MlflowClient().get_model_version(MODEL, versions["trained"]).tags
    assert tags["gate.ab_passed"] == "True"
    ab = mlflow.get_run(tags["gate.ab_run_id"])
    assert ab.data.metrics["challenger_ctr"] > ab.data.metrics["champion_ctr"] and ab.data.metrics["p_value"] < 0.05
    assert ab.data.metrics["challenger_true_ctr"] > ab.data.metrics["champion_true_ctr"]  # the truly better arm
    assert ab.data.metrics["failed_requests"] <= AB_REQUESTS // 100  # failures are logged with their status
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(ab.info.run_id, "abtest")}
    assert {"abtest/report.md", "abtest/ctr_by_arm.png", "abtest/cumulative_ctr.png",
            "abtest/impressions.jsonl"} <= artifacts


def test_aa_shows_no_difference_and_a_skewed_split_trips_srm(versions):
    """Two registered versions of the same checkpoint: 500 requests, no significant difference, no SRM.
    The same log judged against a 70/30 configuration (the splitter served 50/50) is a sample-ratio mismatch."""
    _set_aliases(champion=versions["trained"], challenger=versions["twin"])
    spec = SimulationSpec(requests=AB_REQUESTS, rate=400, seed=0)
    out = simulate_served(versions["cfg"], spec, progress=lambda _: None)
    a = out.analysis
    assert a.versions == {CHAMPION: versions["trained"], CHALLENGER: versions["twin"]}
    assert a.failed <= AB_REQUESTS // 100 and sum(s.impressions for s in a.arms) == AB_REQUESTS - a.failed
    assert not a.lift.significant and a.lift.p_value > 0.05 and not a.srm.mismatch
    assert a.sequential.stopped_at is None
    answered, failures = read_log(out.out_dir / "impressions.jsonl")
    assert len(answered) + len(failures) == AB_REQUESTS  # every request logged once
    assert pd.concat([answered["i"], failures["i"]]).is_unique
    assert (out.out_dir / "report.md").read_text().count("| champion |") == 1

    d = versions["cfg"].data
    from mixrec.features.synthetic import GroundTruth

    truth = GroundTruth(d.num_users, d.num_items, d.days, d.seed)
    skewed = SimulationSpec(requests=AB_REQUESTS, seed=0, expected_weights={CHAMPION: 0.7, CHALLENGER: 0.3})
    again = analyse(attach_clicks(answered, truth, plan_requests(truth, spec)), a.weights, a.versions, skewed,
                    AB_REQUESTS, a.failed)
    assert again.srm.mismatch and again.srm.p_value < 1e-3
    assert np.isclose(again.lift.p_value, a.lift.p_value)  # same data, only the SRM reference changed
