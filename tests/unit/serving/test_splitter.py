"""Sticky salted-hash A/B assignment (pure functions, no Ray)."""

import math

import pytest

from mixrec.serving.splitter import assign_arm, normalize_weights


def test_same_user_same_arm_across_calls():
    weights = {"champion": 0.5, "challenger": 0.5}
    first = [assign_arm(u, weights, "salt") for u in range(500)]
    assert first == [assign_arm(u, weights, "salt") for u in range(500)]


@pytest.mark.parametrize("share", [0.5, 0.1, 0.9])
def test_split_over_10000_users_matches_weights_within_binomial_tolerance(share):
    n = 10_000
    arms = [assign_arm(u, {"champion": 1 - share, "challenger": share}, "mixrec-ab-v1") for u in range(n)]
    got = arms.count("challenger")
    sigma = math.sqrt(n * share * (1 - share))
    assert abs(got - n * share) < 4 * sigma, (got, n * share, sigma)


def test_salt_reshuffles_users():
    weights = {"a": 0.5, "b": 0.5}
    a = [assign_arm(u, weights, "s1") for u in range(2000)]
    b = [assign_arm(u, weights, "s2") for u in range(2000)]
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / 2000
    assert 0.4 < agree < 0.6


def test_zero_weight_arm_gets_nobody():
    assert {assign_arm(u, {"champion": 1.0, "challenger": 0.0}, "s") for u in range(3000)} == {"champion"}


@pytest.mark.parametrize("weights, match", [({}, "at least one"), ({"a": -1.0}, ">= 0"),
                                            ({"a": 0.0, "b": 0.0}, "all be 0"), ({"a": float("nan")}, "finite")])
def test_bad_weights_are_named(weights, match):
    with pytest.raises(ValueError, match=match):
        normalize_weights(weights)
