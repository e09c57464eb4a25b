"""What an A/B simulation is asked for (:class:`SimulationSpec`) and what its impression log shows
(:class:`AbAnalysis`: CTR per arm, lift, SRM, mSPRT), shared by the simulator and its report."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from . import abstats


@dataclass
class SimulationSpec:
    requests: int = 2000
    rate: float = 200.0  # requests per second (pacing); the server may be slower, then concurrency bounds it
    concurrency: int = 16
    candidates: int = 20
    seed: int = 0
    control: str = "champion"
    treatment: str = "challenger"
    alpha: float = 0.05
    sequential: bool = True
    tau: float = 0.05  # mSPRT mixing scale, in CTR units
    look_every: int = 100
    expected_weights: dict[str, float] | None = None  # SRM reference; default: the weights the splitter reports

    def __post_init__(self):
        bad = [name for name, ok in (("requests", self.requests >= 1), ("rate", self.rate > 0),
                                     ("concurrency", self.concurrency >= 1), ("candidates", self.candidates >= 1),
                                     ("alpha", 0 < self.alpha < 1), ("look_every", self.look_every >= 1))
               if not ok]
        if bad:
            raise ValueError(f"invalid A/B simulation setting(s): {', '.join(bad)} ({self})")


@dataclass
class AbAnalysis:
    arms: list[abstats.ArmStats]
    lift: abstats.LiftTest | None
    srm: abstats.SrmCheck
    sequential: abstats.SequentialTest | None
    true_ctr: dict[str, float]  # mean ground-truth click probability of the shown items, per arm
    requests: int
    failed: int
    weights: dict[str, float]
    versions: dict[str, str]
    reference_ctr: dict[str, float] = field(default_factory=dict)

    @property
    def treatment_wins(self) -> bool:
        return bool(self.lift and self.lift.significant and self.lift.winner == self.lift.treatment)

    def metrics(self) -> dict[str, float]:
        out = {"requests": self.requests, "failed_requests": self.failed, "srm_p_value": self.srm.p_value,
               "srm_chi2": self.srm.chi2}
        for a in self.arms:
            out.update({f"{a.arm}_impressions": a.impressions, f"{a.arm}_clicks": a.clicks, f"{a.arm}_ctr": a.ctr,
                        f"{a.arm}_true_ctr": self.true_ctr.get(a.arm, float("nan"))})
        if self.lift:
            out.update({"absolute_lift": self.lift.absolute_lift, "relative_lift": self.lift.relative_lift,
                        "z": self.lift.z, "p_value": self.lift.p_value})
        if self.sequential and len(self.sequential.p_values):
            out["msprt_final_p_value"] = float(self.sequential.p_values[-1])
        return {k: float(v) for k, v in out.items() if v == v}


def analyse(log: pd.DataFrame, weights: dict[str, float], versions: dict[str, str], spec: SimulationSpec,
            requests: int, failed: int) -> AbAnalysis:
    """Statistics of an impression log with clicks (one row per impression, in completion order)."""
    grouped = log.groupby("arm").agg(impressions=("click", "size"), clicks=("click", "sum"), true_ctr=("p_click", "mean"))
    arms = [abstats.arm_stats(arm, int(row.impressions), int(row.clicks)) for arm, row in grouped.iterrows()]
    by_arm = {a.arm: a for a in arms}
    lift = seq = None
    if spec.control in by_arm and spec.treatment in by_arm:
        lift = abstats.lift_test(by_arm[spec.control], by_arm[spec.treatment], spec.alpha)
        if spec.sequential:
            both = log[log["arm"].isin([spec.control, spec.treatment])]
            seq = abstats.msprt(both["arm"].to_numpy() == spec.treatment, both["click"].to_numpy(), spec.alpha,
                                spec.tau, spec.look_every)
    srm = abstats.srm_check({a.arm: a.impressions for a in arms}, spec.expected_weights or weights)
    return AbAnalysis(arms=arms, lift=lift, srm=srm, sequential=seq, true_ctr=grouped["true_ctr"].to_dict(),
                      requests=requests, failed=failed, weights=weights, versions=versions)


def online_gate_reasons(analysis: AbAnalysis) -> list[str]:
    """Why the simulated A/B test does not let the challenger (the treatment) be promoted; empty: it may."""
    if analysis.srm.mismatch:
        return [f"A/B sample-ratio mismatch (p = {analysis.srm.p_value:.2e}): the test is invalid"]
    if not analysis.treatment_wins:
        lift = analysis.lift
        return ["A/B test does not favour the challenger" + (
            f": lift {lift.absolute_lift:+.4f}, p = {lift.p_value:.2e}" if lift else ": an arm got no traffic")]
    return []
