"""Training metrics and optimizer groups (no Ray)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mixrec.models import FeatureLayout, build_model
from mixrec.pipelines.train import build_optimizers, user_auc


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


def test_embedding_table_gets_its_own_optimizer():
    model = build_model("dnn", FeatureLayout(cardinalities=(5, 7), n_dense=2))
    opts = build_optimizers(model, {"optimizer": "adam", "embedding_optimizer": "adagrad", "learning_rate": 1e-3,
                                    "embedding_learning_rate": 0.05, "weight_decay": 0.0})
    assert type(opts["dense"]).__name__ == "Adam" and type(opts["embedding"]).__name__ == "Adagrad"
    assert opts["embedding"].param_groups[0]["lr"] == 0.05
    n_dense = sum(p.numel() for g in opts["dense"].param_groups for p in g["params"])
    n_emb = sum(p.numel() for g in opts["embedding"].param_groups for p in g["params"])
    assert n_dense + n_emb == model.num_parameters() and n_emb == (5 + 7) * model.config()["kwargs"]["embedding_dim"]
