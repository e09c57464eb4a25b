"""The promotion gate's contract with an online gate (a callable, so pipelines never imports serving), through
a real sqlite MLflow registry: two versions with the same weights (identical scores: the offline gate refuses
either against the other, deterministically), held-out synthetic rows, a stub online gate.

No Ray: the preprocessor is fitted on pandas partials, the versions are registered from saved checkpoints."""

from __future__ import annotations

import mlflow
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

    def gate(cfg, version, progress):
        calls.append((version, registry.resolve_alias(MODEL, CHALLENGER)))
        return OnlineVerdict(passed=False, reasons=["online: no lift"], run_id="ab-run", detail="printed")

    out = gated_promote(setup, "2", force=True, online_gate=gate, progress=lambda _: None)
    assert calls == [("2", "2")]  # challenger moved to the version before the gate ran
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
