"""Sticky A/B assignment: a salted hash of the user id picks the arm, in proportion to the arm weights.

Pure functions (no Ray) so the split statistics are unit-testable. The same user always lands in the same arm
for a given salt and weights; changing the salt reshuffles everyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def parse_weights(pairs: Iterable[str]) -> dict[str, float]:
    """``["champion=0.9", "challenger=0.1"]`` -> ``{"champion": 0.9, "challenger": 0.1}``; a malformed pair
    raises ValueError naming it."""
    weights: dict[str, float] = {}
    for pair in pairs:
        alias, sep, value = pair.partition("=")
        try:
            weight = float(value)
        except ValueError:
            sep = ""
        if not sep or not alias.strip():
            raise ValueError(f"weights must be ALIAS=NUMBER, e.g. champion=0.9; got {pair!r}")
        weights[alias.strip()] = weight
    return weights


def normalize_weights(weights: dict[str, float]) -> dict[str, float]:
    if not weights:
        raise ValueError("weights: at least one arm is needed")
    bad = {arm: w for arm, w in weights.items() if not np.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"weights: must be finite and >= 0, got {bad}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError("weights: must not all be 0")
    if not np.isfinite(total):
        raise ValueError(f"weights: their sum overflows ({weights}); use smaller numbers, e.g. 0.9 and 0.1")
    return {arm: w / total for arm, w in sorted(weights.items())}


def user_bucket(user_id: int | str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, user id)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_arm(user_id: int | str, weights: dict[str, float], salt: str) -> str:
    """The arm for ``user_id``: arms sorted by name cover consecutive slices of [0, 1) of their weight."""
    normalized = normalize_weights(weights)
    u = user_bucket(user_id, salt)
    cumulative = 0.0
    for arm, w in normalized.items():
        cumulative += w
        if u < cumulative and w > 0:
            return arm
    return next(arm for arm, w in reversed(normalized.items()) if w > 0)  # u rounding at the top edge
