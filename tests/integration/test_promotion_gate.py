"""The promotion gate's contract with an online gate (a callable, so pipelines never imports serving), through
a real sqlite MLflow registry: two versions with the same weights (identical scores: the offline gate refuses
either against the other, deterministically), held-out synthetic rows, a stub online gate.

No Ray: the preprocessor is fitted on pandas partials, the versions are registered from saved checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
from mixrec.features.synthetic import generate
from mixrec.models import build_model
from mixrec.pipelines import registry
from mixrec.pipelines.checkpoint import save_checkpoint
from mixrec.pipelines.config import parse_config
from mixrec.pipelines.preprocess import fit_from_partials, partial_stats, partial_stats_kwargs
from mixrec.pipelines.promotion import OnlineVerdict, PromotionRefused, gated_promote
from mixrec.pipelines.pyfunc import log_and_register
from mixrec.pipelines.registry import CHALLENGER, CHAMPION, RegistryError
from mixrec.pipelines.workspace import Workspace

pytestmark = pytest.mark.integration

MODEL = "gate-model"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Workspace with a holdout and versions 1 (champion) and 2 (challenger); restores the tracking URI after."""
    import torch

    previous_uri = mlflow.get_tracking_uri()
    root = tmp_path_factory.mktemp("gate")
    cfg = parse_config({"workspace": str(root), "registry": {"model_name": MODEL, "bootstrap_resamples": 200}})
    ws = Workspace.resolve(cfg.workspace).create()
    t = generate(num_events=2000, num_users=100, num_items=60, days=3, seed=4)
    rows = t.events.merge(t.users.drop_duplicates("user_id"), on="user_id", suffixes=("", "_u")).merge(
        t.items, on="item_id", suffixes=("", "_i"))
    rows[[*schema.model_columns, schema.label]].to_parquet(ws.holdout_path)
    pre = fit_from_partials([partial_stats(rows, **partial_stats_kwargs(schema))], schema, 1, 5.0)
    registry.setup_tracking(None, "gate", ws)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "checkpoint", build_model("dnn", pre.layout()), pre)
    for _ in range(2):
        with mlflow.start_run():
            log_and_register(checkpoint, rows[list(schema.model_columns)].head(5), MODEL)
    cfg.__dict__["_test"] = {"checkpoint": checkpoint, "rows": rows, "root": root}  # for the loading tests
    yield cfg
    mlflow.set_tracking_uri(previous_uri)
    if previous_uri.startswith("sqlite:///"):
        registry.set_registry_lock(registry.registry_lock_path(previous_uri, root))


def _reset(challenger: str = "1") -> None:
    client = mlflow.MlflowClient()
    registry.promote(MODEL, "1", reason="test setup")
    registry.move_alias(client, MODEL, CHALLENGER, challenger, reason="test setup")


def test_the_online_gate_runs_on_the_served_challenger_and_its_verdict_is_recorded(setup):
    _reset()
    calls = []

    def gate(cfg, arms, progress):
        calls.append((arms, registry.resolve_alias(MODEL, CHALLENGER)))
        return OnlineVerdict(passed=False, reasons=["online: no lift"], run_id="ab-run", detail="printed")

    out = gated_promote(setup, "2", force=True, online_gate=gate, progress=lambda _: None)
    assert calls == [({CHAMPION: "1", CHALLENGER: "2"}, "2")]  # challenger moved to the version before the gate ran
    assert out.promoted and out.online.detail == "printed" and out.reasons[-1] == "online: no lift"
    assert any("AUC delta" in r for r in out.reasons)  # the offline reasons come first
    tags = mlflow.MlflowClient().get_model_version(MODEL, "2").tags
    assert tags["gate.ab_run_id"] == "ab-run" and tags["gate.ab_passed"] == "False"
    assert "online: no lift" in tags[f"alias.{CHAMPION}.reason"]


def test_the_online_gate_is_skipped_when_the_offline_gate_refuses(setup):
    _reset()
    called = []
    with pytest.raises(PromotionRefused, match="AUC delta"):
        gated_promote(setup, "2", online_gate=lambda *a: called.append(a), progress=lambda _: None)
    assert not called and registry.resolve_alias(MODEL, CHAMPION) == "1"
    # The version's description (the MLflow UI) carries the gate's verdict, one line replaced per evaluation.
    description = mlflow.MlflowClient().get_model_version(MODEL, "2").description
    assert description.count("**Gate:**") == 1 and "offline gate refused against champion v1" in description


def test_an_online_gate_needs_both_arms_served(setup):
    _reset()
    cfg = setup.model_copy(update={"serve": setup.serve.model_copy(update={"arms": {CHAMPION: 1.0}})})
    with pytest.raises(RegistryError, match="needs serve.arms with 'champion' and 'challenger'"):
        gated_promote(cfg, "2", force=True, online_gate=lambda *a: None, progress=lambda _: None)
    assert registry.resolve_alias(MODEL, CHALLENGER) == "1"  # checked before anything moved


def _lenient(cfg):
    """The config with an offline gate that identical models pass (CI low 0 > -1, logloss delta 0 <= 0)."""
    return cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"promote_min_auc_delta": -1.0})})


def _registry_snapshot() -> tuple:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("gate")
    return (dict(client.get_registered_model(MODEL).aliases), len(registry.alias_log(client, MODEL)),
            [client.get_model_version(MODEL, v).tags for v in ("1", "2")],
            len(client.search_runs([exp.experiment_id])))


def test_a_refused_online_gate_moves_challenger_back(setup):
    _reset(challenger="1")
    with pytest.raises(PromotionRefused, match="online: no lift"):
        gated_promote(_lenient(setup), "2", progress=lambda _: None,
                      online_gate=lambda cfg, arms, progress: OnlineVerdict(passed=False, reasons=["online: no lift"]))
    client = mlflow.MlflowClient()
    assert registry.resolve_alias(MODEL, CHALLENGER) == "1" and registry.resolve_alias(MODEL, CHAMPION) == "1"
    moved, restored = registry.alias_log(client, MODEL)[-2:]
    assert (moved["alias"], moved["version"], restored["alias"], restored["version"]) == (CHALLENGER, "2", CHALLENGER, "1")
    assert restored["reason"] == "restored: promotion of v2 did not happen"

    def crashing_gate(cfg, arms, progress):
        raise RuntimeError("serving failed")

    with pytest.raises(RuntimeError, match="serving failed"):
        gated_promote(_lenient(setup), "2", online_gate=crashing_gate, progress=lambda _: None)
    assert registry.resolve_alias(MODEL, CHALLENGER) == "1"


def test_dry_run_reports_the_verdict_and_moves_or_writes_nothing(setup, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from mixrec.cli import app

    _reset(challenger="1")
    before = _registry_snapshot()
    refused = gated_promote(setup, "2", dry_run=True, progress=lambda _: None)
    assert refused.dry_run and not refused.passed and not refused.promoted and refused.eval_run_id is None
    assert any("AUC delta" in r for r in refused.reasons)
    served = []
    passed = gated_promote(_lenient(setup), "2", dry_run=True, progress=lambda _: None,
                           online_gate=lambda cfg, arms, progress: served.append(arms) or OnlineVerdict(True, []))
    assert passed.passed and not passed.promoted and served == [{CHAMPION: "1", CHALLENGER: "2"}]
    assert _registry_snapshot() == before  # no alias, tag, log entry or run written

    strict, lenient = tmp_path / "strict.yaml", tmp_path / "lenient.yaml"
    strict.write_text(yaml.safe_dump(setup.to_dict()))
    lenient.write_text(yaml.safe_dump(_lenient(setup).to_dict()))
    out = CliRunner().invoke(app, ["promote", "2", "--dry-run", "--config", str(strict)])
    assert out.exit_code == 1 and "dry run: gate-model v2 would be refused" in out.output, out.output
    out = CliRunner().invoke(app, ["promote", "2", "--dry-run", "--config", str(lenient)])
    assert out.exit_code == 0 and "dry run: gate-model v2 would be promoted (champion stays v1" in out.output
    mixrec = str(Path(sys.executable).with_name("mixrec"))
    proc = subprocess.run([mixrec, "promote", "2", "--dry-run", "--json", "--config", str(lenient)],
                          capture_output=True, text=True, timeout=300)
    verdict = json.loads(proc.stdout)  # stdout holds the JSON document alone
    assert proc.returncode == 0 and (verdict["passed"], verdict["promoted"], verdict["dry_run"]) == (True, False, True)
    assert verdict["champion_before"] == "1" and "auc_delta_low" in verdict["offline"], verdict
    out = CliRunner().invoke(app, ["promote", "2", "--dry-run", "--force", "--config", str(lenient)])
    assert out.exit_code == 2 and out.output.strip().splitlines() == [
        "error: --dry-run and --force exclude each other: a dry run moves nothing"]
    assert _registry_snapshot() == before


class _Trap(mlflow.pyfunc.PythonModel):
    """Stands for a pickled model from the artifact store: unpickling it touches ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))

    def predict(self, context, model_input, params=None):
        raise AssertionError("never called")


def test_versions_load_from_weights_and_json_never_from_a_pickle(setup):
    from mlflow.models import Model

    from mixrec.pipelines.pyfunc import MixrecRanker, load_ranker

    test = setup.__dict__["_test"]
    features = test["rows"][list(schema.model_columns)].head(50)
    expected = MixrecRanker.from_checkpoint(test["checkpoint"]).score(features)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(test["root"] / "dl")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert {"data/checkpoint/model.pt", "data/checkpoint/model.json", "data/checkpoint/preprocessing.json"} <= files
    assert Model.load(str(local / "MLmodel")).flavors["python_function"]["loader_module"] == "mixrec.pipelines.pyfunc"
    np.testing.assert_allclose(load_ranker(MODEL, "1").score(features), expected, rtol=1e-6)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(features), expected, rtol=1e-6)

    # A version logged the old way (a pickled python_model beside artifacts/checkpoint) loads from its files.
    marker = test["root"] / "unpickled"
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="legacy", python_model=_Trap(str(marker)),
                                       artifacts={"checkpoint": str(test["checkpoint"])})
    legacy = mlflow.register_model(info.model_uri, "legacy-model").version
    marker.unlink(missing_ok=True)
    np.testing.assert_allclose(load_ranker("legacy-model", str(legacy)).score(features), expected, rtol=1e-6)
    assert not marker.exists()
