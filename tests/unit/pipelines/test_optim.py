"""Optimizer groups and warm-up schedules (no Ray)."""

import pytest

from mixrec.models import FeatureLayout, build_model
from mixrec.pipelines.optim import build_optimizers, build_warmup_schedulers


def test_embedding_table_gets_its_own_optimizer():
    model = build_model("dnn", FeatureLayout(cardinalities=(5, 7), n_dense=2))
    opts = build_optimizers(model, {"optimizer": "adam", "embedding_optimizer": "adagrad", "learning_rate": 1e-3,
                                    "embedding_learning_rate": 0.05, "weight_decay": 0.0})
    assert type(opts["dense"]).__name__ == "Adam" and type(opts["embedding"]).__name__ == "Adagrad"
    assert opts["embedding"].param_groups[0]["lr"] == 0.05
    n_dense = sum(p.numel() for g in opts["dense"].param_groups for p in g["params"])
    n_emb = sum(p.numel() for g in opts["embedding"].param_groups for p in g["params"])
    assert n_dense + n_emb == model.num_parameters() and n_emb == (5 + 7) * model.config()["kwargs"]["embedding_dim"]


@pytest.mark.parametrize("warmup_steps", [0, 1, 4])
def test_warmup_rises_linearly_to_the_configured_rate(warmup_steps):
    model = build_model("dnn", FeatureLayout(cardinalities=(5, 7), n_dense=2))
    opts = build_optimizers(model, {"optimizer": "sgd", "embedding_optimizer": None, "learning_rate": 0.1,
                                    "embedding_learning_rate": None, "weight_decay": 0.0})
    schedulers = build_warmup_schedulers(opts, warmup_steps)
    assert schedulers.keys() == opts.keys()
    rates = []
    for _ in range(6):
        rates.append(opts["dense"].param_groups[0]["lr"])
        opts["dense"].step()
        schedulers["dense"].step()
    warmup = max(1, warmup_steps)
    assert rates == pytest.approx([0.1 * min(1.0, (step + 1) / warmup) for step in range(6)])
