"""UniMixer: the eval cache follows fused-optimizer updates; Sinkhorn marginals at the smallest τ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixrec.models import FeatureLayout, build_model

torch.set_num_threads(1)

LAYOUT = FeatureLayout(cardinalities=(11, 7, 5, 3, 9), n_dense=2)


def batch(n: int = 64):
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in LAYOUT.cardinalities], 1)
    dense = torch.randn(n, LAYOUT.n_dense, generator=g)
    return cat, dense, ((cat[:, 0] % 2 == 0) ^ (dense[:, 0] > 0)).float()


def fit(model, steps: int, cat, dense, y, fused: bool = True) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)  # what pipelines/optim.py builds
    model.train()
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(cat, dense), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["unimixer", "unimixer_lite"])
def test_eval_after_fused_adam_steps_matches_a_fresh_copy(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT, tau_anneal_steps=2)  # τ stops changing after 2 steps
    cat, dense, y = batch()
    for _ in range(3):  # validate after every "epoch", as the training loop does
        fit(model, 4, cat, dense, y)
        with torch.no_grad():
            got = model.eval()(cat, dense)
        fresh = build_model(name, LAYOUT, **model.config()["kwargs"])
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            want = fresh.eval()(cat, dense)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("name,kwargs", [
    ("unimixer", dict(tau_start=1.0, tau_end=0.05)),
    ("unimixer", dict(num_tokens=8, d_model=32, block_size=2, tau_end=0.05, flatten_order="channel")),
    ("unimixer_lite", dict(tau_start=1.0, tau_end=0.05)),
    ("unimixer", dict(tau_start=0.2, tau_end=0.2)),
])
def test_sinkhorn_marginals_within_005_at_smallest_tau(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT, tau_anneal_steps=3, **kwargs)
    cat, dense, y = batch()
    fit(model, 5, cat, dense, y)  # past the schedule's end: τ = tau_end, logits moved by training
    tau = model.tau()
    assert float(tau) == pytest.approx(min(kwargs.get("tau_start", 1.0), kwargs["tau_end"]))
    for blk in model.blocks:
        for w in blk.mixing.matrices(tau):
            assert (w.sum(-1) - 1).abs().max() <= 0.05 and (w.sum(-2) - 1).abs().max() <= 0.05


def test_global_matrix_exactly_stochastic_along_its_mixing_axis():
    model = build_model("unimixer", LAYOUT, tau_end=0.05, tau_anneal_steps=0)
    wg, wb = model.blocks[0].mixing.matrices(model.tau())
    # out_j = Σ_i W_G[j, i] z_i: rows of W_G sum to 1; z_j = Σ_i x_i W_B[i, j]: columns of W_B sum to 1
    assert torch.allclose(wg.sum(-1), torch.ones(wg.shape[0]), atol=1e-5)
    assert torch.allclose(wb.sum(-2), torch.ones(wb.shape[:2]), atol=1e-5)
