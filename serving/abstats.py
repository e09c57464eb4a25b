"""A/B test statistics on impression/click counts: pure numpy/scipy/statsmodels (no Ray, no HTTP).

* CTR per arm with Wilson confidence intervals;
* absolute and relative lift of the treatment over the control, two-proportion z-test;
* sample-ratio mismatch (SRM): chi-square of impressions per arm against the configured weights;
* sequential testing: the mixture SPRT (mSPRT, Johari et al. 2017) on the difference of CTRs with a normal
  mixing distribution, giving always-valid p-values at every look, so peeking does not inflate the error rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

SRM_ALPHA = 1e-3  # the usual SRM threshold: a real bug, not noise, when p is this small


@dataclass
class ArmStats:
    arm: str
    impressions: int
    clicks: int
    ctr: float
    ctr_low: float
    ctr_high: float


@dataclass
class LiftTest:
    control: str
    treatment: str
    absolute_lift: float  # CTR(treatment) - CTR(control)
    absolute_low: float
    absolute_high: float
    relative_lift: float  # absolute / CTR(control)
    z: float
    p_value: float
    significant: bool
    winner: str | None  # the arm with the higher CTR when significant


@dataclass
class SrmCheck:
    expected_share: dict[str, float]
    observed: dict[str, int]
    chi2: float
    p_value: float
    mismatch: bool


@dataclass
class SequentialTest:
    """mSPRT along the log: impressions at each look, the always-valid p-value there, and the stop."""

    looks: np.ndarray  # [k] total impressions at each look
    p_values: np.ndarray  # [k] always-valid p-values (non-increasing)
    alpha: float
    tau: float
    stopped_at: int | None  # impressions at the first look with p <= alpha


def arm_stats(arm: str, impressions: int, clicks: int, confidence: float = 0.95) -> ArmStats:
    if impressions <= 0:
        return ArmStats(arm, 0, 0, float("nan"), float("nan"), float("nan"))
    low, high = proportion_confint(clicks, impressions, alpha=1 - confidence, method="wilson")
    return ArmStats(arm, int(impressions), int(clicks), clicks / impressions, float(low), float(high))


def lift_test(control: ArmStats, treatment: ArmStats, alpha: float = 0.05) -> LiftTest:
    """Two-sided two-proportion z-test (pooled variance) and a Newcombe-score CI of the CTR difference."""
    if min(control.impressions, treatment.impressions) == 0:
        raise ValueError(f"both arms need impressions: {control.arm}={control.impressions}, "
                         f"{treatment.arm}={treatment.impressions}")
    counts = np.array([treatment.clicks, control.clicks])
    nobs = np.array([treatment.impressions, control.impressions])
    if counts.sum() in (0, nobs.sum()):  # no variance at all: nothing to test
        z, p = 0.0, 1.0
    else:
        z, p = proportions_ztest(counts, nobs)
    low, high = confint_proportions_2indep(treatment.clicks, treatment.impressions, control.clicks,
                                           control.impressions, method="newcomb", alpha=alpha)
    diff = treatment.ctr - control.ctr
    significant = bool(p < alpha)
    winner = (treatment.arm if diff > 0 else control.arm) if significant else None
    return LiftTest(control=control.arm, treatment=treatment.arm, absolute_lift=diff, absolute_low=float(low),
                    absolute_high=float(high), relative_lift=diff / control.ctr if control.ctr > 0 else float("nan"),
                    z=float(z), p_value=float(p), significant=significant, winner=winner)


def srm_check(observed: dict[str, int], weights: dict[str, float], alpha: float = SRM_ALPHA) -> SrmCheck:
    """Chi-square goodness of fit of impressions per arm to the configured weights (normalised)."""
    arms = sorted(weights)
    missing = set(observed) - set(arms)
    if missing:
        raise ValueError(f"impressions logged for arm(s) {sorted(missing)} that have no configured weight {weights}")
    counts = np.array([observed.get(a, 0) for a in arms], dtype=np.float64)
    share = np.array([weights[a] for a in arms], dtype=np.float64)
    share = share / share.sum()
    chi2, p = stats.chisquare(counts, counts.sum() * share)
    return SrmCheck(expected_share=dict(zip(arms, share.tolist(), strict=True)),
                    observed={a: int(c) for a, c in zip(arms, counts, strict=True)},
                    chi2=float(chi2), p_value=float(p), mismatch=bool(p < alpha))


def msprt(is_treatment: np.ndarray, clicks: np.ndarray, alpha: float = 0.05, tau: float = 0.05,
          look_every: int = 100) -> SequentialTest:
    """Always-valid p-values of "CTR(treatment) == CTR(control)" at every ``look_every`` impressions.

    is_treatment, clicks: [n] booleans in log order. With the CLT estimate d of the CTR difference and its
    variance V at a look, the normal-mixture likelihood ratio is
    ``L = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))`` and p = min over looks so far of 1/L
    (``tau``: the scale of effects one expects, in CTR units)."""
    t = np.asarray(is_treatment, dtype=bool)
    c = np.asarray(clicks, dtype=np.float64)
    looks = np.arange(look_every, len(t) + 1, look_every)
    if len(looks) == 0:
        return SequentialTest(looks=looks, p_values=np.array([]), alpha=alpha, tau=tau, stopped_at=None)
    n_t, n_c = np.cumsum(t)[looks - 1], np.cumsum(~t)[looks - 1]
    x_t, x_c = np.cumsum(c * t)[looks - 1], np.cumsum(c * ~t)[looks - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        p_t, p_c = x_t / n_t, x_c / n_c
        var = p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c
        d = p_t - p_c
        log_lr = 0.5 * np.log(var / (var + tau**2)) + tau**2 * d**2 / (2 * var * (var + tau**2))
    p = np.where(np.isfinite(log_lr) & (var > 0), np.minimum(1.0, np.exp(-log_lr)), 1.0)
    p = np.minimum.accumulate(p)
    hit = np.flatnonzero(p <= alpha)
    return SequentialTest(looks=looks, p_values=p, alpha=alpha, tau=tau,
                          stopped_at=int(looks[hit[0]]) if len(hit) else None)
