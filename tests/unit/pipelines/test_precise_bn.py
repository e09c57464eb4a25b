"""Precise BatchNorm statistics at an epoch's end (no Ray): eval mode normalises with the statistics of the
current weights under the eval-mode forward, not training's lagging, dropout-inflated moving averages."""

import torch
from torch import nn

from mixrec.models import FeatureLayout, build_model
from mixrec.models.batch import Batch
from mixrec.pipelines.precise_bn import batch_norms, recompute_batch_norm

LAYOUT = FeatureLayout(cardinalities=(50, 40, 30, 20), n_dense=2)


def _batches(n: int, rows: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        cat = torch.stack([torch.randint(0, c, (rows,), generator=g) for c in LAYOUT.cardinalities], 1)
        dense = torch.randn(rows, LAYOUT.n_dense, generator=g)
        labels = ((cat[:, 0] % 3 == 0) ^ (dense[:, 0] > 0.5)).float()
        out.append(Batch(cat, dense, labels))
    return out


def _trained_dcnv2() -> nn.Module:
    """The Frappe DCNv2 shape (BN + dropout 0.2 in the deep part), a few fast Adam steps: its BatchNorm
    moving averages now lag the weights and carry dropout's variance."""
    torch.manual_seed(0)
    model = build_model("dcnv2", LAYOUT, embedding_dim=8, num_cross_layers=2, structure="parallel",
                        dnn_dims=(64, 64, 64), batch_norm=True, dropout=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for batch in _batches(30, 256, seed=1):
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch.categorical, batch.dense), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _eval_forward_means(model: nn.Module, batches: list[Batch]) -> list[torch.Tensor]:
    """Per BatchNorm, the mean of its input over ``batches`` in the eval-mode forward (dropout off)."""
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in batch_norms(model)}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen[mod].append(args[0].mean(0))) for m in seen]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            model(batch.categorical, batch.dense)
    for h in hooks:
        h.remove()
    return [torch.stack(v).mean(0) for v in seen.values()]


def test_running_statistics_become_those_of_the_eval_forward_on_the_current_weights():
    model = _trained_dcnv2()
    batches = _batches(8, 256, seed=2)
    first_input_mean = _eval_forward_means(model, batches)[0]  # what the first BatchNorm sees in eval mode
    stale_error = [(m.running_mean - t).abs().max() for m, t in zip(batch_norms(model),
                                                                    _eval_forward_means(model, batches), strict=True)]
    assert len(stale_error) == 3 and min(stale_error) > 1e-2

    assert recompute_batch_norm(model, batches) == 8
    norms = batch_norms(model)
    assert torch.allclose(norms[0].running_mean, first_input_mean, atol=1e-5)
    # deeper layers: their inputs now come through the new statistics of the layers below
    error = [(m.running_mean - t).abs().max() for m, t in zip(norms, _eval_forward_means(model, batches), strict=True)]
    assert all(e < 0.1 * s for e, s in zip(error, stale_error, strict=True)), (error, stale_error)
    assert all(m.momentum == 0.1 for m in norms)  # training goes on with its moving average
    assert not model.training  # left in eval mode, dropout included


def test_eval_mode_is_calibrated_like_the_batch_statistics_forward():
    """The mean predicted click rate in eval mode matches the forward that normalises with the batches' own
    statistics (dropout off); the training moving averages miss it."""
    model = _trained_dcnv2()
    batches = _batches(8, 512, seed=3)

    def mean_prob(batch_stats: bool) -> float:
        model.eval()
        for m in batch_norms(model):
            m.train(batch_stats)
        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(model(b.categorical, b.dense)) for b in batches])
        model.eval()
        return float(probs.mean())

    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in batch_norms(model)]
    reference = mean_prob(batch_stats=True)
    for m, (mean, var, n) in zip(batch_norms(model), saved, strict=True):  # the reference forward updated them
        m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(n)
    before = abs(mean_prob(batch_stats=False) - reference)
    recompute_batch_norm(model, batches)
    after = abs(mean_prob(batch_stats=False) - reference)
    assert after < 0.2 * before and after < 0.01


def test_models_without_batch_norm_and_empty_batches_are_left_alone():
    model = build_model("dnn", LAYOUT, batch_norm=False)
    assert recompute_batch_norm(model, _batches(2, 32, seed=4)) == 0
    with_bn = _trained_dcnv2()
    before = [m.running_var.clone() for m in batch_norms(with_bn)]
    assert recompute_batch_norm(with_bn, []) == 0
    assert all(torch.equal(b, m.running_var) for b, m in zip(before, batch_norms(with_bn), strict=True))
