"""Model zoo: unification identities, analytic FLOPs, deep-gradient, routing and schedule tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mixrec.models import FeatureLayout, available_models, available_sizes, build_model
from mixrec.models.layers import Tower
from mixrec.models.mixing import (
    global_local_mix,
    log_sinkhorn,
    token_mix,
    token_mix_permutation,
    token_revert,
)
from mixrec.models.rankmixer import RankMixerBlock
from mixrec.models.tokenmixer_large import TokenMixerLargeBlock
from mixrec.models.unimixer import UniMixing
from mixrec.models.wukong import WukongLayer, optimized_fm
from mixrec.models.zoo import size_kwargs

torch.set_num_threads(1)

LAYOUT = FeatureLayout(cardinalities=(11, 7, 5, 3, 9), n_dense=2)


def batch(n: int, layout: FeatureLayout = LAYOUT, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in layout.cardinalities], 1)
    dense = torch.randn(n, layout.n_dense, generator=g)
    y = ((cat[:, 0] % 2 == 0) ^ (dense[:, 0] > 0)).float()
    return cat, dense, y


# --------------------------------------------------------------------------- unification (a) (b) (c)
@pytest.mark.parametrize("t,d", [(2, 4), (4, 8), (4, 32), (8, 16), (3, 12)])
def test_a_unimixing_with_permutation_is_rankmixer_mixing(t, d):
    x = torch.randn(5, t, d)
    ref = RankMixerBlock(t, d, 4).mix(x)
    assert torch.equal(ref, token_mix(x, t))
    mixing = UniMixing(t, d, block_size=d // t)  # M = T² chunks of width D/T
    perm = token_mix_permutation(t)
    assert torch.equal(perm, perm.T) and torch.equal(perm @ perm, torch.eye(t * t))
    eye = torch.eye(d // t).expand(t * t, -1, -1)
    assert torch.allclose(mixing.mix_with(x, perm, eye), ref)
    assert torch.allclose(mixing.mix_with(x, perm, None), ref)
    # the real normalised forward path: logits sharply peaked on the permutation / identity
    with torch.no_grad():
        mixing.global_logits.copy_(60.0 * perm)
        mixing.local_logits.copy_(60.0 * eye)
    mixing.eval()
    assert torch.allclose(mixing(x, tau=1.0), ref, atol=1e-5)


@pytest.mark.parametrize("n,d,k", [(5, 4, 3), (10, 8, 24), (7, 16, 2)])
def test_b_fm_special_case_equals_wukong_optimized_fm(n, d, k):
    x = torch.randn(3, n, d, dtype=torch.float64)
    layer = WukongLayer(n, d, 2, 2, k, (8,)).double()
    y = layer.y.detach()
    wukong = optimized_fm(x, y)
    naive = x @ (x.transpose(1, 2) @ y)
    # unified template: global G = X Xᵀ (input dependent, unnormalised), local values = Y
    unified = global_local_mix(y.expand(3, -1, -1), x @ x.transpose(1, 2))
    assert torch.allclose(wukong, naive) and torch.allclose(unified, wukong)


@pytest.mark.parametrize("t,d,h", [(4, 8, 4), (4, 8, 2), (6, 12, 3), (5, 20, 10), (3, 6, 6)])
def test_c_tokenmixer_large_revert_undoes_mix(t, d, h):
    x = torch.randn(4, t, d)
    mixed = token_mix(x, h)
    assert mixed.shape == (4, h, t * d // h)
    assert torch.equal(token_revert(mixed, t), x)
    if h == t:
        assert torch.equal(token_revert(x, t), token_mix(x, t))  # involution
    blk = TokenMixerLargeBlock(t, d, h, ffn_ratio=2)
    with torch.no_grad():  # zero FFN outputs: the block is then mix -> revert on the residual path
        blk.ffn_mix.ffn.down.weight.zero_()
        blk.ffn_orig.ffn.down.weight.zero_()
    assert torch.equal(blk(x), x)


def test_sinkhorn_doubly_stochastic():
    z = log_sinkhorn(torch.randn(3, 6, 6), 30).exp()
    assert torch.allclose(z.sum(-1), torch.ones(3, 6), atol=1e-4)
    assert torch.allclose(z.sum(-2), torch.ones(3, 6), atol=1e-5)


# --------------------------------------------------------------------------- analytic FLOPs
# rankmixer_moe's sparse inference computes a data-dependent share of its experts: checked per forward in
# test_moe.py; here its masked reference
FLOP_CASES = [(name, dict(moe_impl="masked") if name == "rankmixer_moe" else {}) for name in available_models()] + [
    ("dnn", dict(hidden_dims=(32, 16, 8), embedding_dim=4)),
    ("dcnv2", dict(low_rank=4, structure="stacked")),
    ("dcnv2", dict(structure="crossnet", num_cross_layers=3)),
    ("rankmixer", dict(num_tokens=8, d_model=64, ffn_ratio=4, num_layers=3)),
    ("rankmixer_moe", dict(num_experts=8, expert_hidden=16, moe_impl="masked")),
    ("tokenmixer_large", dict(num_tokens=6, d_model=24, num_heads=3, num_layers=4)),
    ("tokenmixer_large", dict(num_tokens=3, d_model=16, num_heads=8, global_token=False, num_layers=3)),
    ("tokenmixer_large_moe", dict(num_experts=8, top_k=3, ffn_ratio=4)),
    ("unimixer", dict(num_tokens=8, d_model=16, block_size=8, num_layers=3)),
    ("unimixer", dict(block_size=16, flatten_order="channel")),
    ("unimixer", dict(pooling="flatten", tower_dims=(32, 16))),
    ("tokenmixer_large", dict(pooling="flatten", num_layers=3, tower_dims=(32,))),
    ("unimixer", dict(tower_batch_norm=True, tower_dims=(32, 16))),
    ("tokenmixer_large", dict(tower_batch_norm=True, inter_residual_every=1)),
    ("rankmixer", dict(tower_batch_norm=True)),
    ("unimixer_lite", dict(num_tokens=8, d_model=16, block_size=2, rank=4, num_basis=2)),
    ("wukong", dict(num_layers=3, num_fm_embeddings=6, num_lcb_embeddings=2, fm_rank=5, fmb_mlp_dims=(32, 16))),
    ("wukong", dict(num_layers=2, num_fm_embeddings=4, num_lcb_embeddings=3)),  # n_in == n_out later
]


def counted_flops(model, n: int) -> int:
    cat, dense, _ = batch(n)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(cat, dense)
    return fc.get_total_flops()


@pytest.mark.parametrize("name,kwargs", FLOP_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FLOP_CASES)])
def test_analytic_flops_match_flop_counter(name, kwargs):
    model = build_model(name, LAYOUT, **kwargs).eval()
    counted_flops(model, 2)  # warm caches (UniMixer eval matrices are computed once per τ)
    per_example = (counted_flops(model, 10) - counted_flops(model, 2)) / 8
    analytic = model.flops_per_example()
    assert per_example > 0
    assert abs(analytic - per_example) <= 0.05 * per_example, (analytic, per_example)


@pytest.mark.parametrize("name", ["unimixer", "tokenmixer_large", "rankmixer"])
def test_tower_batch_norm_follows_every_hidden_layer_of_every_tower(name):
    plain = build_model(name, LAYOUT, tower_dims=(16, 8))
    normed = build_model(name, LAYOUT, tower_dims=(16, 8), tower_batch_norm=True)
    towers = [m for m in normed.modules() if isinstance(m, Tower)]
    assert towers and not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    for tower in towers:
        assert [m.num_features for m in tower.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [16, 8]
    assert build_model(name, LAYOUT, **normed.config()["kwargs"]).state_dict().keys() == normed.state_dict().keys()


# --------------------------------------------------------------------------- deep configs: gradients
DEEP = {
    "dnn": dict(hidden_dims=(16,) * 8),
    "dcnv2": dict(num_cross_layers=8),
    "wukong": dict(num_layers=8),
}


GRADIENT_CASES = [(name, DEEP.get(name, dict(num_layers=8))) for name in available_models()] + [
    ("unimixer", dict(num_layers=8, pooling="flatten")),
    ("tokenmixer_large", dict(num_layers=8, pooling="flatten")),  # its auxiliary towers read the flattened tokens
]


@pytest.mark.parametrize("name,kwargs", GRADIENT_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(GRADIENT_CASES)])
def test_eight_layers_all_params_get_gradients(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT, **kwargs).train()
    cat, dense, y = batch(32)
    logits = model(cat, dense, labels=y)
    loss = F.binary_cross_entropy_with_logits(logits, y) + model.auxiliary_loss()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing


# --------------------------------------------------------------------------- sparse routing
def _train(model, steps, lr=1e-2, n=128):
    cat, dense, y = batch(n)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(cat, dense, labels=y)
        loss = F.binary_cross_entropy_with_logits(logits, y) + model.auxiliary_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cat, dense, y


@pytest.mark.parametrize("target", [0.25, 0.5])
def test_rankmixer_moe_routing_within_target_active_ratio(target):
    torch.manual_seed(0)
    # embedding_norm=False: see the known limitation in rankmixer_moe.py's docstring
    model = build_model("rankmixer_moe", LAYOUT, num_experts=4, target_active_ratio=target, embedding_norm=False)
    cat, dense, y = batch(128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    ratios = []
    for _ in range(150):
        loss = F.binary_cross_entropy_with_logits(model(cat, dense), y) + model.auxiliary_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ratios.append(model.routing_stats()["active_ratio"])
    assert ratios[0] > target  # starts above budget, the controller brings it down
    late = sum(ratios[-50:]) / 50
    assert 0.05 < late <= target + 0.1, ratios[-50:]
    stats = model.routing_stats()
    assert stats["step"] == 150 and stats["target_active_ratio"] == target
    model.eval()
    with torch.no_grad():
        model(cat, dense)
    assert model.routing_stats()["eval_active_ratio"] <= target + 0.15
    sd = model.state_dict()
    assert "l1_lambda" in sd and "moe_step" in sd


def test_rankmixer_moe_eval_uses_infer_router_only():
    model = build_model("rankmixer_moe", LAYOUT).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.moe.router_train.normal_()
    cat, dense, _ = batch(8)
    a = model(cat, dense)
    with torch.no_grad():
        for blk in model.blocks:
            blk.moe.router_train.normal_()
    assert torch.equal(a, model(cat, dense))


def test_tokenmixer_large_moe_active_ratio():
    model = build_model("tokenmixer_large_moe", LAYOUT, num_experts=4, top_k=2)
    _train(model, 5)
    stats = model.routing_stats()
    assert stats["target_active_ratio"] == 0.5 and abs(stats["active_ratio"] - 0.5) < 1e-6


def test_tokenmixer_large_aux_loss_needs_labels():
    model = build_model("tokenmixer_large", LAYOUT, num_layers=4).train()
    cat, dense, y = batch(16)
    model(cat, dense)
    assert model.auxiliary_loss().item() == 0.0
    assert model.auxiliary_loss(y).item() > 0.0
    model(cat, dense, labels=y)
    assert model.auxiliary_loss().item() > 0.0
    off = build_model("tokenmixer_large", LAYOUT, num_layers=4, aux_loss_weight=0.0).train()
    off(cat, dense, labels=y)
    assert off.auxiliary_loss().item() == 0.0


# --------------------------------------------------------------------------- UniMixer temperature
@pytest.mark.parametrize("name", ["unimixer", "unimixer_lite"])
def test_unimixer_temperature_schedule_and_no_train_eval_mismatch(name):
    model = build_model(name, LAYOUT, tau_start=1.0, tau_end=0.1, tau_anneal_steps=10, dropout=0.0)
    assert model.temperature() == 1.0
    cat, dense, _ = _train(model, 4)
    assert int(model.tau_step) == 4 and abs(model.temperature() - (1.0 - 0.9 * 0.4)) < 1e-9
    model.eval()
    with torch.no_grad():
        model(cat, dense)
    assert int(model.tau_step) == 4  # eval does not advance the schedule
    # training forward at step s and eval forward at the same step give the same function
    model.train()
    with torch.no_grad():
        out_train = model(cat, dense)
    model.tau_step.fill_(4)
    model.eval()
    with torch.no_grad():
        out_eval = model(cat, dense)
        out_eval2 = model(cat, dense)
    assert torch.allclose(out_train, out_eval, atol=1e-6) and torch.equal(out_eval, out_eval2)
    tau = model.temperature()
    wg, wb = model.blocks[0].mixing.matrices(tau)
    cg, cb = model.blocks[0].mixing._eval_matrices(tau)
    assert torch.equal(wg, cg) and torch.equal(wb, cb)
    assert torch.allclose(wg.sum(1), torch.ones(wg.shape[0]), atol=1e-5)  # rows: the axis the global mix uses
    # the schedule is part of the checkpoint
    again = build_model(name, LAYOUT, **model.config()["kwargs"])
    again.load_state_dict(model.state_dict())
    assert again.temperature() == model.temperature()
    _train(model, 20)
    assert model.temperature() == pytest.approx(0.1)


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("tokenmixer_large", dict(d_model=30, num_heads=4), "d_model .* divisible by num_heads"),
        ("tokenmixer_large_moe", dict(num_experts=2, top_k=3), "top_k"),
        ("tokenmixer_large_moe", dict(num_experts=3), "num_experts .* divide"),
        ("tokenmixer_large", dict(num_tokens=12), "num_tokens"),
        ("tokenmixer_large", dict(pooling="max"), "pooling"),
        ("unimixer", dict(pooling="global"), "pooling"),
        ("unimixer", dict(block_size=5), "block_size .* must divide"),
        ("unimixer_lite", dict(block_size=4, rank=1000), "rank"),
        ("unimixer", dict(flatten_order="zigzag"), "flatten_order"),
        ("unimixer", dict(tau_end=0.0), "tau"),
        ("rankmixer_moe", dict(target_active_ratio=1.5), "target_active_ratio"),
        ("rankmixer_moe", dict(num_experts=0), "num_experts"),
        ("dcnv2", dict(structure="diagonal"), "structure"),
        ("wukong", dict(num_fm_embeddings=0), "num_fm_embeddings"),
        ("dnn", dict(dropout=1.5), "dropout"),
    ],
)
def test_config_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, LAYOUT, **kwargs)


# --------------------------------------------------------------------------- named sizes
def test_named_sizes_build_and_rebuild():
    layout = FeatureLayout(cardinalities=(50,) * 10, n_dense=2)
    for size in available_sizes():
        if size.endswith("_large"):
            continue  # large sizes are too big for a unit test
        arch, kw = size_kwargs(size)
        model = build_model(size, layout)
        assert model.config()["name"] == arch
        assert model.config()["kwargs"].items() >= {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}.items()
        assert model.flops_per_example() > 0
