"""The offline promotion gate's statistics: vectorised weighted AUC/logloss and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mixrec.pipelines.evaluation import (
    offline_gate,
    paired_bootstrap,
    weighted_auc,
    weighted_logloss,
)


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-(signal - 1.0)))).astype(int)
    good = 1 / (1 + np.exp(-(signal - 1.0)))
    noisy = 1 / (1 + np.exp(-(0.3 * signal + rng.normal(size=n) - 1.0)))
    return labels, good, noisy


def test_weighted_auc_and_logloss_match_sklearn_with_ties_and_weights():
    labels, good, _ = _data()
    coarse = np.round(good, 2)  # many tied scores
    rng = np.random.default_rng(1)
    w = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=3)
    for row in w:
        assert weighted_auc(labels, coarse, row[None])[0] == pytest.approx(
            roc_auc_score(labels, coarse, sample_weight=row), abs=1e-12)
        assert weighted_logloss(labels, good, row[None])[0] == pytest.approx(
            log_loss(labels, good, sample_weight=row), rel=1e-9)


def test_identical_models_have_a_zero_width_delta_and_fail_a_strict_gate():
    labels, good, _ = _data()
    cmp = paired_bootstrap(labels, good, good.copy(), resamples=200, seed=0)
    assert cmp.auc_delta.low == cmp.auc_delta.high == 0.0  # paired: the same rows in every replicate
    assert not offline_gate(cmp, min_auc_delta=0.0, max_logloss_increase=0.0).passed


def test_better_challenger_passes_worse_fails_and_is_reproducible():
    labels, good, noisy = _data()
    better = paired_bootstrap(labels, noisy, good, resamples=1000, seed=3)
    assert better.auc_delta.low > 0.05 and better.logloss_delta.high < 0
    assert offline_gate(better, 0.0, 0.0).passed
    assert paired_bootstrap(labels, noisy, good, resamples=1000, seed=3) == better
    worse = paired_bootstrap(labels, good, noisy, resamples=1000, seed=3)
    decision = offline_gate(worse, 0.0, 0.0)
    assert not decision.passed and len(decision.reasons) == 2
    assert "AUC delta" in decision.reasons[0] and "logloss delta" in decision.reasons[1]
    # A margin above the measured improvement refuses a better model too.
    assert not offline_gate(better, min_auc_delta=better.auc_delta.high, max_logloss_increase=0.0).passed


def test_bootstrap_ci_covers_the_true_delta_at_about_the_nominal_rate():
    """Coverage check on 40 independent samples from a population whose AUC delta is known (estimated on
    200k rows): a 90% CI should cover it in roughly 36 of 40 (allow 30..40)."""
    labels, good, noisy = _data(200_000, seed=9)
    truth = roc_auc_score(labels, good) - roc_auc_score(labels, noisy)
    covered = 0
    for k in range(40):
        idx = np.random.default_rng(100 + k).integers(0, len(labels), 1500)
        cmp = paired_bootstrap(labels[idx], noisy[idx], good[idx], resamples=200, seed=k, confidence=0.9)
        covered += cmp.auc_delta.low <= truth <= cmp.auc_delta.high
    assert 30 <= covered <= 40


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="both clicks and non-clicks"):
        paired_bootstrap(np.zeros(10), np.ones(10) / 2, np.ones(10) / 2)
    with pytest.raises(ValueError, match="one value per row"):
        paired_bootstrap(np.array([0, 1]), np.ones(2) / 2, np.ones(3) / 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_scores_fail_the_gate(bad):
    """A challenger that is better on every finite row still fails when one score is NaN or infinite."""
    labels, good, noisy = _data()
    broken = good.copy()
    broken[7] = bad
    cmp = paired_bootstrap(labels, noisy, broken, resamples=200, seed=0)
    assert cmp.challenger_nonfinite == 1 and cmp.champion_nonfinite == 0
    assert np.isfinite(cmp.auc_delta.low) and cmp.auc_delta.low > 0  # the rest of it is clearly better
    decision = offline_gate(cmp, min_auc_delta=0.0, max_logloss_increase=0.0)
    assert not decision.passed
    assert decision.reasons == ["challenger produced 1 NaN or infinite score(s) on the held-out rows"]
    assert offline_gate(paired_bootstrap(labels, noisy, good, resamples=200, seed=0), 0.0, 0.0).passed
