"""Paired bootstrap comparison of two models scored on the same held-out rows (the offline promotion gate).

Pure numpy (no Ray, no MLflow). Resampling is vectorised: each bootstrap replicate is a row of multinomial
counts ``W [B, n]``, applied to both models' scores, so every replicate compares the models on the *same*
resampled rows (paired) and the CI of the delta is much tighter than two independent CIs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

EPS = 1e-7


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (Mann-Whitney U with tied scores counted 1/2).

    labels, scores: [n]; weights: [B, n] non-negative row weights (bootstrap counts) -> [B] AUCs
    (NaN where a replicate has no positive or no negative)."""
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    # Start index of each group of equal scores in sorted order; reduceat sums within groups.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = np.asarray(weights, dtype=np.float64)[:, order]
    y = labels[order]
    pos = np.add.reduceat(w * y, starts, axis=1)  # [B, groups]
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)


def weighted_logloss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean log loss for each row of ``weights``: labels, probs [n]; weights [B, n] -> [B]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    per_row = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    w = np.asarray(weights, dtype=np.float64)
    return (w @ per_row) / w.sum(axis=1)


@dataclass
class Interval:
    estimate: float
    low: float
    high: float


@dataclass
class PairedComparison:
    """Challenger minus champion on the same rows; CIs are bootstrap percentile intervals."""

    rows: int
    resamples: int
    confidence: float
    champion_auc: float
    challenger_auc: float
    champion_logloss: float
    challenger_logloss: float
    auc_delta: Interval
    logloss_delta: Interval
    champion_nonfinite: int = 0  # NaN or infinite scores (counted before they are scored as 0.5)
    challenger_nonfinite: int = 0

    def flat(self) -> dict[str, float]:
        """Flat metric names for MLflow: auc_delta, auc_delta_low, ..."""
        out: dict[str, float] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                out[key] = value["estimate"]
                out[f"{key}_low"], out[f"{key}_high"] = value["low"], value["high"]
            else:
                out[key] = float(value)
        return out


def paired_bootstrap(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95, chunk: int = 200) -> PairedComparison:
    """AUC and logloss of both models and bootstrap CIs of their deltas (challenger - champion).

    labels, champion, challenger: [n] (0/1 labels, click probabilities). Replicates are drawn ``chunk`` at a
    time ([chunk, n] counts) to bound memory; a fixed ``seed`` makes the intervals reproducible."""
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0 or not 0 < labels.sum() < n:
        raise ValueError(f"held-out data needs both clicks and non-clicks; got {n} rows with {int(labels.sum())} clicks")
    if len(champion) != n or len(challenger) != n:
        raise ValueError(f"scores must have one value per row: {n} labels, {len(champion)} champion, "
                         f"{len(challenger)} challenger scores")
    # A NaN/inf score ranks arbitrarily and its logloss is undefined: count them (the gate refuses any) and
    # score them as an uninformative 0.5 so the statistics stay defined.
    champion, challenger = np.asarray(champion, dtype=np.float64), np.asarray(challenger, dtype=np.float64)
    nonfinite = {"champion": int((~np.isfinite(champion)).sum()), "challenger": int((~np.isfinite(challenger)).sum())}
    champion, challenger = (np.where(np.isfinite(s), s, 0.5) for s in (champion, challenger))
    rng = np.random.default_rng(seed)
    auc_d, ll_d = [], []
    for start in range(0, resamples, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start))
        auc_d.append(weighted_auc(labels, challenger, w) - weighted_auc(labels, champion, w))
        ll_d.append(weighted_logloss(labels, challenger, w) - weighted_logloss(labels, champion, w))
    full = np.ones((1, n))
    base = {name: (float(weighted_auc(labels, s, full)[0]), float(weighted_logloss(labels, s, full)[0]))
            for name, s in (("champion", champion), ("challenger", challenger))}
    tail = 100 * (1 - confidence) / 2

    def interval(deltas: list[np.ndarray], estimate: float) -> Interval:
        d = np.concatenate(deltas)
        low, high = np.nanpercentile(d, [tail, 100 - tail])
        return Interval(estimate=estimate, low=float(low), high=float(high))

    return PairedComparison(
        rows=n, resamples=resamples, confidence=confidence,
        champion_auc=base["champion"][0], challenger_auc=base["challenger"][0],
        champion_logloss=base["champion"][1], challenger_logloss=base["challenger"][1],
        auc_delta=interval(auc_d, base["challenger"][0] - base["champion"][0]),
        logloss_delta=interval(ll_d, base["challenger"][1] - base["champion"][1]),
        champion_nonfinite=nonfinite["champion"], challenger_nonfinite=nonfinite["challenger"])


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]


def offline_gate(cmp: PairedComparison, min_auc_delta: float, max_logloss_increase: float) -> GateDecision:
    """Pass when the whole CI of the AUC delta lies above ``min_auc_delta`` and the logloss delta (point
    estimate) is at most ``max_logloss_increase``, and neither model produced a NaN or infinite score; the
    reasons name every failed condition (a NaN statistic fails its condition)."""
    reasons = [f"{who} produced {n} NaN or infinite score(s) on the held-out rows"
               for who, n in (("challenger", cmp.challenger_nonfinite), ("champion", cmp.champion_nonfinite)) if n]
    if not cmp.auc_delta.low > min_auc_delta:
        reasons.append(f"AUC delta {cmp.auc_delta.estimate:+.4f} with {cmp.confidence:.0%} CI "
                       f"[{cmp.auc_delta.low:+.4f}, {cmp.auc_delta.high:+.4f}] is not above the margin {min_auc_delta:+.4f}")
    if not cmp.logloss_delta.estimate <= max_logloss_increase:
        reasons.append(f"logloss delta {cmp.logloss_delta.estimate:+.4f} (CI [{cmp.logloss_delta.low:+.4f}, "
                       f"{cmp.logloss_delta.high:+.4f}]) is worse than allowed ({max_logloss_increase:+.4f})")
    return GateDecision(passed=not reasons, reasons=reasons)
