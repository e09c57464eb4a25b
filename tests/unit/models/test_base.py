"""Unit tests of the model zoo: smoke training, interface, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixrec.models import FeatureLayout, RankingModel, available_models, build_model, model_summary_table

torch.set_num_threads(1)

LAYOUT = FeatureLayout(cardinalities=(11, 7, 5, 3), n_dense=2)


def tiny_batch(layout: FeatureLayout, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in layout.cardinalities], 1)
    dense = torch.randn(n, layout.n_dense, generator=g)
    # learnable signal: depends on field 0 and the first dense value
    y = ((cat[:, 0] % 2 == 0).float() + (dense[:, 0] > 0).float() >= 1).float() if layout.n_dense else (
        cat[:, 0] % 2 == 0
    ).float()
    return cat, dense, y


def train_steps(model: RankingModel, cat, dense, y, steps: int = 30, lr: float = 1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        logits = model(cat, dense)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        total = loss + model.auxiliary_loss(y)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", available_models())
def test_smoke_training(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT)
    cat, dense, y = tiny_batch(LAYOUT)
    model.eval()
    with torch.no_grad():
        out = model(cat, dense)
    assert out.shape == (64,) and out.dtype == torch.float32
    losses = train_steps(model, cat, dense, y)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-5:]) < losses[0] * 0.9, losses
    aux = model.auxiliary_loss()
    assert aux.dim() == 0 and torch.isfinite(aux)
    model.eval()
    with torch.no_grad():
        out = model(cat, dense)
    assert out.shape == (64,) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", available_models())
def test_config_roundtrip_and_counts(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT)
    cfg = model.config()
    assert cfg["name"] == name
    again = build_model(cfg["name"], LAYOUT, **cfg["kwargs"])
    again.load_state_dict(model.state_dict())
    cat, dense, _ = tiny_batch(LAYOUT, 8)
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.allclose(model(cat, dense), again(cat, dense))
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0
    table = model.embedding.table.weight.numel()
    assert model.num_parameters(embeddings=False) == model.num_parameters() - table > 0
    assert model.flops_per_example() > 0


@pytest.mark.parametrize("name", available_models())
def test_no_dense_fields(name):
    layout = FeatureLayout(cardinalities=(9, 4, 6))
    model = build_model(name, layout)
    cat, _, _ = tiny_batch(layout, 5)
    model.eval()
    with torch.no_grad():
        assert model(cat, torch.zeros(5, 0)).shape == (5,)
        assert model(cat).shape == (5,)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="allowed names"):
        build_model("nope", LAYOUT)


def test_unknown_kwarg():
    with pytest.raises(ValueError, match="allowed"):
        build_model("rankmixer", LAYOUT, dmodel=8)


def test_out_of_range_ids():
    model = build_model("dnn", LAYOUT)
    cat, dense, _ = tiny_batch(LAYOUT, 4)
    cat[0, 2] = 5  # cardinality of field 2 is 5
    with pytest.raises(ValueError, match="field 2"):
        model(cat, dense)
    cat[0, 2] = -1
    with pytest.raises(ValueError, match="out of range"):
        model(cat, dense)


def test_bad_shapes():
    model = build_model("dnn", LAYOUT)
    cat, dense, _ = tiny_batch(LAYOUT, 4)
    with pytest.raises(ValueError, match="categorical"):
        model(cat[:, :2], dense)
    with pytest.raises(ValueError, match="dense"):
        model(cat, dense[:, :1])


def test_layout_validation():
    with pytest.raises(ValueError, match="cardinalities"):
        FeatureLayout(cardinalities=(3, 0))
    with pytest.raises(ValueError, match="n_dense"):
        FeatureLayout(cardinalities=(3,), n_dense=-1)
    lay = FeatureLayout(cardinalities=[3, 4], n_dense=1)
    assert lay.cardinalities == (3, 4) and lay.num_fields == 3


def test_rankmixer_config_errors():
    with pytest.raises(ValueError, match="d_model .* divisible by num_tokens"):
        build_model("rankmixer", LAYOUT, d_model=30, num_tokens=4)
    with pytest.raises(ValueError, match="num_tokens"):
        build_model("rankmixer", LAYOUT, embedding_dim=1, num_tokens=12, d_model=36)
    with pytest.raises(ValueError, match="num_layers"):
        build_model("rankmixer", LAYOUT, num_layers=0)


def test_summary_table():
    rows = model_summary_table()
    assert [r.name for r in rows] == available_models()
    for r in rows:
        assert r.parameters > 0 and r.mflops_per_example > 0


# --------------------------------------------------------------------------- zoo and sizes
MOE_OWN = ["num_experts", "expert_hidden", "target_active_ratio", "l1_lambda_init", "lambda_lr", "distill_weight",
           "moe_impl"]


def test_moe_variants_take_their_parents_keywords():
    moe, dense = (build_model(n, LAYOUT, embedding_dim=4).config()["kwargs"]
                  for n in ("tokenmixer_large_moe", "tokenmixer_large"))
    assert list(moe) == list(dense)  # the same keywords in the same order, three other defaults
    assert {k: v for k, v in moe.items() if moe[k] != dense[k]} == {"num_experts": 4, "top_k": 2, "moe_alpha": 2.0}
    rankmixer_moe = build_model("rankmixer_moe", LAYOUT, num_layers=3, num_experts=2)
    assert list(rankmixer_moe.config()["kwargs"]) == [*build_model("rankmixer", LAYOUT).config()["kwargs"], *MOE_OWN]
    assert rankmixer_moe.config()["kwargs"]["num_layers"] == 3 and rankmixer_moe.layer_active_ratio.shape == (3,)
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['bogus'\] for model 'rankmixer_moe'; "
                                         r"allowed: \['embedding_dim', .*'moe_impl'\]"):
        build_model("rankmixer_moe", LAYOUT, bogus=1)


def test_named_sizes_build_their_architecture_with_overrides():
    from mixrec.models import available_sizes, sizes

    assert "unimixer_small" in available_sizes() and "unimixer_small" not in available_models()
    via_builder, via_name = sizes.unimixer_small(LAYOUT, dropout=0.1), build_model("unimixer_small", LAYOUT, dropout=0.1)
    assert via_builder.config() == via_name.config()
    assert via_name.config()["name"] == "unimixer" and via_name.config()["kwargs"]["dropout"] == 0.1
    assert sizes.rankmixer_small.__doc__.startswith("Named size 'rankmixer_small': rankmixer with")
    with pytest.raises(ValueError, match=r"or a named size: .*unimixer_small"):
        build_model("unimixer_tiny", LAYOUT)


# --------------------------------------------------------------------------- GPU readiness
# every model's eval forward; the training forwards that keep per-step state (τ step, MoE λ, aux towers)
GRAPH_CASES = [(name, "eval") for name in available_models()] + [
    (name, "train") for name in ("rankmixer_moe", "tokenmixer_large_moe", "unimixer_moe")]


@pytest.mark.parametrize("name,mode", GRAPH_CASES, ids=[f"{n}-{m}" for n, m in GRAPH_CASES])
def test_forward_compiles_without_graph_breaks(name, mode):
    """No host sync (id check, τ step) or untraceable op in any forward: one dynamo graph."""
    torch.manual_seed(0)
    kw = dict(sinkhorn_iters=3) if name.startswith("unimixer") else {}  # a short unrolled Sinkhorn: fast to trace
    model = build_model(name, LAYOUT, **kw).train(mode == "train")
    cat, dense, _ = tiny_batch(LAYOUT, 4)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(cat, dense)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


# --------------------------------------------------------------------------- init keywords (issue 15 item 2)
@pytest.mark.parametrize("name", ["rankmixer", "rankmixer_moe", "unimixer", "unimixer_moe", "tokenmixer_large"])
def test_zero_bias_init_and_embedding_init_std(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT, zero_bias_init=True, embedding_init_std=0.05, embedding_norm=False)
    biases = {n: p for n, p in model.named_parameters()
              if n.startswith(("tokenizer", "blocks")) and n.rsplit(".", 1)[-1] in ("bias", "b1", "b2")}
    assert biases and all(not p.any() for p in biases.values()), [n for n, p in biases.items() if p.any()]
    assert model.embedding.table.weight.std().item() == pytest.approx(0.05, rel=0.3)
    default = build_model(name, LAYOUT)
    tokenizer_biases = [p for n, p in default.named_parameters() if n.startswith("tokenizer") and n.endswith("bias")]
    if name.startswith("unimixer"):  # the plain init is UniMixer's default (docs/models.md, "embedding_norm")
        assert not default.embedding.field_norm and not any(p.any() for p in tokenizer_biases)
        assert default.embedding.table.weight.std().item() == pytest.approx(0.01, rel=0.3)
    else:
        assert default.embedding.field_norm and any(p.any() for p in tokenizer_biases)
        assert default.embedding.table.weight.std().item() == pytest.approx(1e-4, rel=0.3)


@pytest.mark.parametrize("name", ["dnn", "dcnv2"])
def test_xavier_linear_init(name):
    torch.manual_seed(0)
    model = build_model(name, LAYOUT, linear_init="xavier", hidden_dims=(64, 32)) if name == "dnn" else \
        build_model(name, LAYOUT, linear_init="xavier", dnn_dims=(64, 32))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(not m.bias.any() for m in linears)
    first = linears[0]
    fan_in, fan_out = first.weight.shape[1], first.weight.shape[0]
    assert first.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.2)
    assert all(m.bias.any() for m in build_model(name, LAYOUT).modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match="linear_init"):
        build_model(name, LAYOUT, linear_init="he")
