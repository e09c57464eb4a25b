"""The registry at a glance: every registered version of a model with its aliases, test metrics, gate results
and lineage, read from MLflow (version tags, the registering run's metrics). Read-only."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import mlflow

GATE_PREFIX = "gate."
LINEAGE_PREFIX = "lineage."


@dataclass
class VersionSummary:
    version: str
    aliases: list[str]
    created: str  # UTC, ISO 8601
    model: str  # architecture (the version's ``model`` tag)
    run_id: str | None
    test_metrics: dict[str, float] = field(default_factory=dict)
    gate: dict[str, str] = field(default_factory=dict)  # ``gate.*`` tags without the prefix
    lineage: dict = field(default_factory=dict)  # ``lineage.*`` tags without the prefix; ``config`` parsed

    def to_dict(self) -> dict:
        return asdict(self)


def list_versions(model_name: str) -> list[VersionSummary]:
    """Every version of ``model_name``, newest first. Tracking must be set up by the caller; an unknown
    model raises :class:`~mixrec.pipelines.registry.RegistryError`, naming the models there are."""
    from .registry import RegistryError

    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(f"no registered model {model_name!r}; registered models: {names}") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        metrics = {}
        if mv.run_id:
            try:
                metrics = {k: v for k, v in client.get_run(mv.run_id).data.metrics.items() if k.startswith("test_")}
            except mlflow.exceptions.MlflowException:  # the run was deleted; the version stays listed
                metrics = {}
        lineage = {k.removeprefix(LINEAGE_PREFIX): v for k, v in mv.tags.items() if k.startswith(LINEAGE_PREFIX)}
        if "config" in lineage:
            lineage["config"] = json.loads(lineage["config"])
        out.append(VersionSummary(
            version=str(mv.version), aliases=sorted(aliases.get(str(mv.version), [])),
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            model=mv.tags.get("model", ""), run_id=mv.run_id or None, test_metrics=metrics,
            gate={k.removeprefix(GATE_PREFIX): v for k, v in mv.tags.items() if k.startswith(GATE_PREFIX)},
            lineage=lineage))
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def gate_summary(gate: dict[str, str]) -> str:
    """``offline passed, AUC +0.0031 vs v1; A/B failed`` ("-": never gated)."""
    if not gate:
        return "-"
    parts = []
    if "offline_passed" in gate:
        verdict = "passed" if gate["offline_passed"] == "True" else "refused"
        delta = f", AUC {gate['auc_delta']}" if "auc_delta" in gate else ""
        against = f" vs v{gate['against_champion']}" if gate.get("against_champion") else ""
        parts.append(f"offline {verdict}{delta}{against}")
    if "ab_passed" in gate:
        parts.append("A/B " + ("passed" if gate["ab_passed"] == "True" else "refused"))
    return "; ".join(parts) or "-"
