"""Metrics reported on scores (no Ray)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mixrec.pipelines.metrics import user_auc


def test_user_auc_is_the_impression_weighted_mean_of_per_user_aucs():
    rng = np.random.default_rng(0)
    users = rng.integers(1, 30, 3000)
    labels = (rng.uniform(size=3000) < 0.3).astype(np.float32)
    probs = np.clip(labels * 0.2 + rng.uniform(size=3000), 0, 1)
    expected, weight = 0.0, 0
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            expected += roc_auc_score(labels[m], probs[m]) * m.sum()
            weight += m.sum()
    assert user_auc(users, labels, probs) == pytest.approx(expected / weight, abs=1e-12)


def test_user_auc_without_any_mixed_user_is_nan():
    assert np.isnan(user_auc(np.array([1, 1, 2]), np.array([1.0, 1.0, 0.0]), np.array([0.2, 0.3, 0.4])))
