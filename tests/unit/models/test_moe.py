"""MoE layers: sparse grouped dispatch equals the masked reference, DTSI distillation isolation, active and
computed FLOPs against FlopCounterMode, per-expert load."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mixrec.models import FeatureLayout, build_model, moe
from mixrec.models.dispatch import expert_ffn
from mixrec.models.moe import DTSIPerTokenMoE, SPMoESwiGLU

torch.set_num_threads(1)

LAYOUT = FeatureLayout(cardinalities=(11, 7, 5, 3, 9), n_dense=2)
MOE_MODELS = ["rankmixer_moe", "tokenmixer_large_moe", "unimixer_moe"]


def batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in LAYOUT.cardinalities], 1)
    dense = torch.randn(n, LAYOUT.n_dense, generator=g)
    y = ((cat[:, 0] % 2 == 0) ^ (dense[:, 0] > 0)).float()
    return cat, dense, y


def pair(cls, *args, **kw):
    """The same layer twice, sparse and masked, with equal weights."""
    torch.manual_seed(0)
    sparse, masked = cls(*args, impl="sparse", **kw), cls(*args, impl="masked", **kw)
    masked.load_state_dict(sparse.state_dict())
    return sparse, masked


@pytest.fixture(params=[False, True], ids=["cut", "static"])
def shape_mode(request, monkeypatch):
    """Both dispatch shape modes through the layers: cut (the CPU default) and static (the accelerator default,
    forced here on CPU), with NaN planted in freed memory so that unset rows of the kernel would show."""
    monkeypatch.setattr(moe, "expert_ffn", functools.partial(expert_ffn, static_shapes=request.param))
    junk = [torch.full((4096,), float("nan")) for _ in range(8)]
    del junk


# (tokens, width, hidden, E, k, bias): aligned and unaligned widths (padded for the kernel), k = 1 (shared only)
SP_CASES = [(4, 32, 64, 4, 2, False), (3, 6, 12, 4, 3, True), (2, 16, 32, 8, 1, False), (5, 8, 40, 8, 8, True)]


@pytest.mark.parametrize("t,d,h,e,k,bias", SP_CASES)
def test_spmoe_sparse_equals_masked_forward_and_backward(t, d, h, e, k, bias, shape_mode):
    sparse, masked = pair(SPMoESwiGLU, t, d, h, e, k, 2.0, bias=bias, down_init_scale=1.0)
    with torch.no_grad():  # non-zero biases so that their slicing is checked too
        for m in (sparse, masked):
            for p in m.parameters():
                if p.dim() == 2 and p is not m.router:
                    p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape))
    x = torch.randn(17, t, d)
    ys, ms = sparse(x)
    ym, mm = masked(x)
    assert torch.equal(ms, mm) and ms[..., 0].all() and (ms.sum(-1) == k).all()
    assert torch.allclose(ys, ym, atol=1e-5)
    g = torch.randn_like(ys)
    (ys * g).sum().backward()
    (ym * g).sum().backward()
    for (name, ps), pm in zip(sparse.named_parameters(), masked.parameters(), strict=True):
        grad = ps.grad if ps.grad is not None else torch.zeros_like(ps)  # k = 1: the sparse path skips the router
        assert torch.allclose(grad, pm.grad, atol=1e-5), name


@pytest.mark.parametrize("router", ["infer", "train"])
def test_dtsi_sparse_inference_equals_masked(router, shape_mode):
    sparse, masked = pair(DTSIPerTokenMoE, 4, 16, 24, 4)
    sparse.eval(), masked.eval()
    sparse.eval_router = masked.eval_router = router
    x = torch.randn(33, 4, 16)
    with torch.no_grad():
        (ys, gs, _), (ym, gm, _) = sparse(x), masked(x)
    assert 0 < (gs > 0).float().mean() < 1  # some experts skipped, some run
    assert torch.equal(gs, gm) and torch.allclose(ys, ym, atol=1e-5)


def test_dtsi_distillation_trains_only_the_inference_router():
    torch.manual_seed(0)
    model = build_model("rankmixer_moe", LAYOUT, l1_lambda_init=0.0).train()
    cat, dense, _ = batch(32)
    model(cat, dense)
    distill = model.auxiliary_loss()  # λ = 0: the distillation term alone
    assert distill.item() > 0
    distill.backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert moved and all(n.split(".")[-1] in ("router_infer", "router_infer_bias") for n in moved), moved


def test_dtsi_eval_router_switch_and_errors():
    model = build_model("rankmixer_moe", LAYOUT).eval()
    cat, dense, _ = batch(16)
    with torch.no_grad():
        infer = model(cat, dense)
        model.eval_router = "train"
        train = model(cat, dense)
    assert model.eval_router == "train" and not torch.allclose(infer, train)
    with pytest.raises(ValueError, match="eval_router"):
        model.eval_router = "both"
    with pytest.raises(ValueError, match="moe_impl"):
        build_model("tokenmixer_large_moe", LAYOUT, moe_impl="dense")


def count(model, n: int) -> float:
    cat, dense, _ = batch(n, seed=n)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(cat, dense)
    return fc.get_total_flops() / n


@pytest.mark.parametrize("name", MOE_MODELS)
def test_active_and_computed_flops_match_flop_counter(name):
    kw = dict(sinkhorn_iters=3) if name.startswith("unimixer") else {}
    torch.manual_seed(0)
    sparse = build_model(name, LAYOUT, **kw).eval()
    masked = build_model(name, LAYOUT, moe_impl="masked", **kw).eval()
    masked.load_state_dict(sparse.state_dict())
    sparse_counted, masked_counted = count(sparse, 64), count(masked, 64)  # the same batch for both
    # sparse: computes the active experts only (DTSI: at the ratio of this very forward)
    assert sparse.flops_per_example() == sparse.active_flops_per_example()
    assert sparse.flops_per_example() == pytest.approx(sparse_counted, rel=0.01)
    # masked reference: computes every expert; its active FLOPs are what the sparse path counted
    assert masked.flops_per_example() == pytest.approx(masked_counted, rel=0.01)
    assert masked.active_flops_per_example() == pytest.approx(sparse_counted, rel=0.01)
    assert masked.active_flops_per_example() < 0.85 * masked.flops_per_example()


@pytest.mark.parametrize("name", MOE_MODELS)
def test_routing_stats_report_per_expert_load(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT, num_experts=4, top_k=2) if name != "rankmixer_moe" else build_model(name, LAYOUT)
    cat, dense, y = batch(64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = F.binary_cross_entropy_with_logits(model.train()(cat, dense), y) + model.auxiliary_loss(y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    stats = model.routing_stats()
    load = stats["expert_load"]
    assert len(load) == 4 and all(0.0 <= v <= 1.0 for v in load)
    assert sum(load) / 4 == pytest.approx(stats["active_ratio"])
    if name == "rankmixer_moe":
        with torch.no_grad():
            model.eval()(cat, dense)
        assert len(model.routing_stats()["eval_expert_load"]) == 4
    else:  # shared expert always on, top-1 of the routed ones
        assert load[0] == 1.0 and sum(load[1:]) == pytest.approx(1.0)
