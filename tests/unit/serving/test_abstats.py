"""A/B statistics on counts: Wilson CIs, two-proportion z-test, SRM chi-square, mSPRT always-valid p-values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mixrec.serving.abstats import arm_stats, lift_test, msprt, srm_check


def test_lift_test_matches_a_hand_computed_pooled_z():
    control, treatment = arm_stats("champion", 1000, 100), arm_stats("challenger", 1000, 140)
    lt = lift_test(control, treatment)
    pooled = 240 / 2000
    z = (0.14 - 0.10) / np.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert lt.z == pytest.approx(z, rel=1e-9) and lt.p_value == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)
    assert lt.absolute_lift == pytest.approx(0.04) and lt.relative_lift == pytest.approx(0.4)
    assert lt.significant and lt.winner == "challenger" and lt.absolute_low > 0
    assert control.ctr_low < 0.10 < control.ctr_high


def test_no_difference_is_not_significant_and_empty_arm_is_named():
    lt = lift_test(arm_stats("champion", 800, 80), arm_stats("challenger", 820, 83))
    assert not lt.significant and lt.winner is None and lt.absolute_low < 0 < lt.absolute_high
    with pytest.raises(ValueError, match="challenger=0"):
        lift_test(arm_stats("champion", 10, 1), arm_stats("challenger", 0, 0))


def test_srm_trips_on_a_skewed_split_and_not_on_a_fair_one():
    weights = {"champion": 0.5, "challenger": 0.5}
    assert srm_check({"champion": 1030, "challenger": 970}, weights).mismatch is False
    skewed = srm_check({"champion": 1150, "challenger": 850}, weights)
    assert skewed.mismatch and skewed.p_value < 1e-3
    # Against the weights that were actually configured (a 57.5/42.5 split), the same counts are fine.
    assert not srm_check({"champion": 1150, "challenger": 850}, {"champion": 0.575, "challenger": 0.425}).mismatch
    with pytest.raises(ValueError, match="no configured weight"):
        srm_check({"other": 5}, weights)


def test_msprt_type_one_error_under_peeking_stays_near_alpha_and_detects_a_real_lift():
    """200 A/A streams of 3000 impressions, peeking every 100: a fixed-horizon z-test at each look would
    reject far more than 5 %; the mSPRT's always-valid p-value stays at or below about alpha."""
    rng = np.random.default_rng(0)
    n, runs = 3000, 200
    treat = rng.uniform(size=(runs, n)) < 0.5
    clicks = rng.uniform(size=(runs, n)) < 0.1
    rejections = sum(msprt(treat[r], clicks[r], alpha=0.05, tau=0.05).stopped_at is not None for r in range(runs))
    assert rejections / runs <= 0.08
    lifted = rng.uniform(size=n) < np.where(treat[0], 0.2, 0.1)
    seq = msprt(treat[0], lifted, alpha=0.05, tau=0.05)
    assert seq.stopped_at is not None and seq.stopped_at < n
    assert np.all(np.diff(seq.p_values) <= 0)  # always-valid p-values never increase


def test_aa_false_positive_rate_of_the_z_test_is_alpha():
    """1,000 A/A experiments of 500 impressions per arm at CTR 0.25 (the size and CTR of the HTTP A/A test):
    the z-test at alpha 0.05 rejects in 3-7 % of them."""
    rng = np.random.default_rng(42)
    clicks = rng.binomial(500, 0.25, size=(1000, 2))
    rejected = [lift_test(arm_stats("champion", 500, a), arm_stats("challenger", 500, b)).significant
                for a, b in clicks]
    assert 0.03 <= np.mean(rejected) <= 0.07
