"""Gated promotion: the challenger becomes champion only when it beats the champion offline (paired bootstrap
on the same held-out rows) and, given an ``online_gate``, online too (e.g. a simulated A/B test through the
served splitter: the gate is a callable, so this package never imports the serving layer).

Every evaluation is an MLflow run (``promote-eval``) and tags on the challenger version (``gate.*``); the alias
move itself is recorded by :func:`registry.move_alias`. The final move is a compare-and-set under the registry
lock: if the champion changed while this evaluation ran, the promotion is refused rather than judged against a
champion that no longer serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from . import registry, story
from .config import PipelineConfig, dataset_schema
from .errors import EXIT_FAILED
from .evaluation import GateDecision, PairedComparison, offline_gate, paired_bootstrap
from .pyfunc import load_ranker
from .registry import CHALLENGER, CHAMPION, RegistryError
from .workspace import Workspace


class PromotionRefused(RegistryError):
    """The gate failed (the message lists why); ``--force`` overrides."""

    exit_code = EXIT_FAILED  # the gate ran and said no: a failed run, not bad input


@dataclass
class OnlineVerdict:
    """What an online gate found."""

    passed: bool
    reasons: list[str]  # why it did not pass (empty when passed)
    run_id: str | None = None  # MLflow run of the online test
    detail: Any = None  # what the gate wants printed (e.g. serving's AbResult)


# (cfg, arms, progress) -> verdict: serve ``arms`` (alias -> version: the champion and the candidate as
# ``challenger``) pinned to those versions, whatever the aliases say, and judge them.
OnlineGate = Callable[[PipelineConfig, dict[str, str], Callable[[str], None]], OnlineVerdict]


@dataclass
class PromotionOutcome:
    model_name: str
    champion_before: str
    challenger: str
    comparison: PairedComparison
    offline: GateDecision
    promoted: bool
    eval_run_id: str | None  # None in a dry run (nothing is written)
    online: OnlineVerdict | None = None  # with an online gate
    reasons: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def passed(self) -> bool:
        return not self.reasons


def load_holdout(path: Path, label: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """The held-out rows (Parquet, model columns + label); errors name the file and the missing columns."""
    path = Path(path)
    if not path.exists():
        raise RegistryError(f"held-out data not found: {path} (run the pipeline, or pass --data FILE.parquet)")
    frame = pd.read_parquet(path)
    missing = [c for c in (*columns, label) if c not in frame.columns]
    if missing:
        raise RegistryError(f"held-out data {path} lacks column(s) {missing}")
    if frame[label].isna().any() or not frame[label].isin([0, 1]).all():
        raise RegistryError(f"held-out data {path}: column {label!r} must be 0/1 without nulls")
    return frame


def compare_versions(model_name: str, champion: str, challenger: str, holdout: pd.DataFrame, label: str,
                     columns: tuple[str, ...], resamples: int, seed: int) -> PairedComparison:
    """Score the same rows with both versions (each applies its own preprocessing) and bootstrap the deltas."""
    features = holdout[list(columns)]
    scores = {v: load_ranker(model_name, v).score(features) for v in (champion, challenger)}
    return paired_bootstrap(holdout[label].to_numpy(), scores[champion], scores[challenger], resamples, seed)


def _log_evaluation(model_name: str, champion: str, challenger: str, data: Path, cmp: PairedComparison,
                    decision: GateDecision, cfg: PipelineConfig) -> str:
    r = cfg.registry
    with mlflow.start_run(run_name=f"promote-eval-v{challenger}-vs-v{champion}") as run:
        mlflow.log_params({"champion_version": champion, "challenger_version": challenger, "holdout": str(data),
                           "bootstrap_resamples": r.bootstrap_resamples, "bootstrap_seed": r.bootstrap_seed,
                           "min_auc_delta": r.promote_min_auc_delta,
                           "max_logloss_increase": r.promote_max_logloss_increase})
        mlflow.log_metrics(cmp.flat())
        mlflow.set_tags({"gate.offline_passed": str(decision.passed), "gate.reasons": "; ".join(decision.reasons)})
    client = mlflow.MlflowClient()
    for key, value in {"gate.offline_passed": str(decision.passed), "gate.eval_run_id": run.info.run_id,
                       "gate.against_champion": champion, "gate.auc_delta": f"{cmp.auc_delta.estimate:+.5f}",
                       "gate.auc_delta_ci": f"[{cmp.auc_delta.low:+.5f}, {cmp.auc_delta.high:+.5f}]",
                       "gate.logloss_delta": f"{cmp.logloss_delta.estimate:+.5f}"}.items():
        client.set_model_version_tag(model_name, challenger, key, value)
    story.set_gate_line(client, model_name, challenger, (
        f"offline gate {'passed' if decision.passed else 'refused'} against champion v{champion} (eval run "
        f"`{run.info.run_id}`): AUC delta {cmp.auc_delta.estimate:+.4f}, {cmp.confidence:.0%} CI "
        f"[{cmp.auc_delta.low:+.4f}, {cmp.auc_delta.high:+.4f}]; logloss delta {cmp.logloss_delta.estimate:+.4f}"
        + "".join(f"; {reason}" for reason in decision.reasons)))
    return run.info.run_id


def gated_promote(cfg: PipelineConfig, version: str, *, force: bool = False, online_gate: OnlineGate | None = None,
                  data: Path | None = None, reason: str = "gated promotion", dry_run: bool = False,
                  progress: Callable[[str], None] = print) -> PromotionOutcome:
    """Evaluate ``version`` against the current champion and move ``champion`` to it when the gates pass (or
    ``force``). The ``online_gate`` runs when the offline gate passed (or ``force``), with ``challenger``
    moved to ``version`` first (recorded) and moved back should the promotion not happen. Raises
    :class:`PromotionRefused` when a gate fails. ``dry_run``: run the gates and return the verdict
    (``outcome.passed``) without moving an alias or writing anything to MLflow. Tracking must be set up by the
    caller."""
    schema = dataset_schema(cfg)
    ws = Workspace.resolve(cfg.workspace)
    name, version = cfg.registry.model_name, str(version)
    client = mlflow.MlflowClient()
    registry.check_version_exists(client, name, version)
    champion = registry.resolve_alias(name, CHAMPION)
    if champion == version:
        raise RegistryError(f"{name} v{version} is already the champion")
    data = Path(data) if data else ws.holdout_path
    holdout = load_holdout(data, schema.label, schema.model_columns)
    progress(f"offline gate: v{version} vs champion v{champion} on {len(holdout):,} held-out rows ({data}), "
             f"{cfg.registry.bootstrap_resamples} paired bootstrap resamples")
    cmp = compare_versions(name, champion, version, holdout, schema.label, schema.model_columns,
                           cfg.registry.bootstrap_resamples, cfg.registry.bootstrap_seed)
    decision = offline_gate(cmp, cfg.registry.promote_min_auc_delta, cfg.registry.promote_max_logloss_increase)
    run_id = None if dry_run else _log_evaluation(name, champion, version, data, cmp, decision, cfg)
    outcome = PromotionOutcome(model_name=name, champion_before=champion, challenger=version, comparison=cmp,
                               offline=decision, promoted=False, eval_run_id=run_id, reasons=list(decision.reasons),
                               dry_run=dry_run)
    if online_gate is None or not (decision.passed or force):
        return _finish(outcome, force, reason)
    _check_ab_arms(cfg)
    arms = {CHAMPION: champion, CHALLENGER: version}
    if dry_run:
        outcome.online = online_gate(cfg, arms, progress)
        outcome.reasons.extend(outcome.online.reasons)
        return outcome
    previous = registry.alias_version(client, name, CHALLENGER)
    if previous != version:
        registry.move_alias(client, name, CHALLENGER, version, reason="online A/B gate of a promotion")
    try:
        outcome.online = online_gate(cfg, arms, progress)
        client.set_model_version_tag(name, version, "gate.ab_run_id", outcome.online.run_id or "")
        client.set_model_version_tag(name, version, "gate.ab_passed", str(outcome.online.passed))
        outcome.reasons.extend(outcome.online.reasons)
        return _finish(outcome, force, reason)
    finally:
        if not outcome.promoted and previous not in (None, version):
            registry.move_alias(client, name, CHALLENGER, previous,
                                reason=f"restored: promotion of v{version} did not happen")


def _finish(outcome: PromotionOutcome, force: bool, reason: str) -> PromotionOutcome:
    """Refuse (the reasons listed), report a dry run's verdict, or move ``champion`` (compare-and-set)."""
    name, version = outcome.model_name, outcome.challenger
    if outcome.dry_run:
        return outcome
    if outcome.reasons and not force:
        raise PromotionRefused(f"promotion of {name} v{version} refused:\n  - " + "\n  - ".join(outcome.reasons)
                               + "\n(use --force to promote anyway)")
    why = f"{reason}; eval run {outcome.eval_run_id}" + (
        "; FORCED past: " + " | ".join(outcome.reasons) if outcome.reasons else "")
    registry.promote(name, version, reason=why, expected_champion=outcome.champion_before)
    outcome.promoted = True
    return outcome


def _check_ab_arms(cfg: PipelineConfig) -> None:
    """An online gate serves champion against challenger: both must be served arms."""
    arms = dict(cfg.serve.arms)
    if CHAMPION not in arms or CHALLENGER not in arms:
        raise RegistryError(f"--require-ab needs serve.arms with {CHAMPION!r} and {CHALLENGER!r}, got {arms}")
