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


def test_embedding_l2_penalty_is_fuxictr_embedding_regularizer_on_the_table_only():
    """loss + l2/2·‖table‖² (FuxiCTR's embedding_regularizer): the table's gradient gains l2·table, nothing else."""
    import torch

    from mixrec.pipelines.optim import embedding_l2_penalty, embedding_tables

    model = build_model("dcnv2", FeatureLayout(cardinalities=(5, 7), n_dense=1))
    (table,) = embedding_tables(model)
    assert table.shape[0] == 5 + 7
    penalty = embedding_l2_penalty([table], 0.05)
    assert penalty.item() == pytest.approx(0.025 * table.detach().pow(2).sum().item())
    penalty.backward()
    assert torch.allclose(table.grad, 0.05 * table.detach())
    assert all(p.grad is None for p in model.parameters() if p is not table)


def test_weight_average_is_the_exponential_moving_average_and_keeps_step_counters():
    """avg_k = d·avg_{k-1} + (1−d)·w_k from the first weights; UniMixer's integer temperature step is the live
    one (torch's EMA alone would round it back to its first value)."""
    import torch

    from mixrec.pipelines.optim import build_weight_average, update_weight_average

    model = build_model("unimixer", FeatureLayout(cardinalities=(5, 7), n_dense=1), tau_anneal_steps=10)
    averaged = build_weight_average(model, decay=0.8)
    param = next(p for name, p in model.named_parameters() if name.endswith("embedding.table.weight"))
    expected = None
    for step in range(4):
        with torch.no_grad():
            param.add_(1.0)
            model.tau_step += 1
        update_weight_average(averaged, model)
        expected = param.detach().clone() if expected is None else 0.8 * expected + 0.2 * param.detach()
        assert int(averaged.module.tau_step) == int(model.tau_step) == step + 1
    kept = dict(averaged.module.named_parameters())["embedding.table.weight"]
    assert torch.allclose(kept, expected) and not torch.allclose(kept, param)


def test_a_weight_average_of_a_batch_norm_model_without_recomputed_statistics_is_refused(tmp_path):
    """Refused on the driver, before Ray is asked for anything: the average needs precise BN statistics."""
    from mixrec.pipelines.config import TrainConfig
    from mixrec.pipelines.preprocess import DenseStats, Preprocessor
    from mixrec.pipelines.train import train

    pre = Preprocessor(categorical=["u", "i"], dense=["p"], vocabularies={"u": [3, 9], "i": ["a", "b"]},
                       dense_stats={"p": DenseStats(0.0, 1.0, False)}, clip_sigma=3.0, label="y")
    cfg = TrainConfig(ema_decay=0.995, precise_bn_batches=0)
    with pytest.raises(ValueError, match="precise_bn_batches > 0 for dcnv2"):
        train(None, None, pre, "dcnv2", {"batch_norm": True}, cfg, tmp_path, run_name="ema-no-bn")
