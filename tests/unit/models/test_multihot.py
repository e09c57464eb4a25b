"""Multi-hot fields in the model interface: FeatureLayout.bag_sizes, mean pooling in FeatureEmbedding,
and every model of the zoo on a layout with bags."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixrec.models import FeatureLayout, available_models, build_model
from mixrec.models.layers import FeatureEmbedding

torch.set_num_threads(1)

# fields: single (11), bag of 4 (7), single (5), bag of 2 (3); two dense
BAGGED = FeatureLayout(cardinalities=(11, 7, 5, 3), n_dense=2, bag_sizes=(1, 4, 1, 2))


def bag_batch(layout: FeatureLayout, n: int = 32, seed: int = 0):
    """Random ids per id column, about a third of the bag columns padded with 0; a learnable label."""
    g = torch.Generator().manual_seed(seed)
    cards = torch.tensor([layout.cardinalities[f] for f in layout.column_fields])
    cat = (torch.rand(n, layout.n_id_columns, generator=g) * cards).long()
    in_bag = torch.tensor([layout.bags[f] > 1 for f in layout.column_fields])
    cat[(torch.rand(cat.shape, generator=g) < 0.35) & in_bag] = 0
    dense = torch.randn(n, layout.n_dense, generator=g)
    y = ((cat[:, 0] % 2 == 0) ^ (dense[:, 0] > 0)).float()
    return cat, dense, y


def test_layout_bag_sizes_validation_and_normalization():
    assert BAGGED.n_cat == 4 and BAGGED.n_id_columns == 8 and BAGGED.num_fields == 6
    assert BAGGED.column_fields == (0, 1, 1, 1, 1, 2, 3, 3)
    plain = FeatureLayout(cardinalities=(3, 4), bag_sizes=[1, 1])
    assert plain == FeatureLayout(cardinalities=(3, 4)) and plain.bag_sizes == () and plain.bags == (1, 1)
    assert FeatureLayout(cardinalities=(3, 4), bag_sizes=[1, 5]).bag_sizes == (1, 5)  # JSON lists work
    with pytest.raises(ValueError, match=r"one size per categorical field \(2\), got 3"):
        FeatureLayout(cardinalities=(3, 4), bag_sizes=(1, 2, 3))
    with pytest.raises(ValueError, match="bag_sizes must all be >= 1, got 0 for categorical field 1"):
        FeatureLayout(cardinalities=(3, 4), bag_sizes=(2, 0))
    with pytest.raises(ValueError, match="bag_sizes must be a sequence of ints"):
        FeatureLayout(cardinalities=(3, 4), bag_sizes=("a", 1))


def test_inputs_are_checked_per_id_column():
    model = build_model("dnn", BAGGED)
    cat, dense, _ = bag_batch(BAGGED, 4)
    with pytest.raises(ValueError, match=r"shape \[B, 8\] \(4 fields, bag sizes \(1, 4, 1, 2\)\)"):
        model(cat[:, :4], dense)
    cat[1, 7] = 3  # the last column belongs to field 3, cardinality 3
    with pytest.raises(ValueError, match=r"field 3 \(id column 7\): ids must be in \[0, 3\)"):
        model(cat, dense)
    cat[1, 7], cat[2, 3] = 0, 6  # field 1's cardinality (7) applies to all four of its columns
    model(cat, dense)


def test_bags_are_mean_pooled_ignoring_padding_and_empty_bags_embed_as_oov():
    torch.manual_seed(0)
    emb = FeatureEmbedding(BAGGED, 5)
    table = emb.table.weight
    offset = dict(enumerate((0, 11, 18, 23)))
    cat = torch.tensor([[3, 2, 0, 2, 5, 4, 1, 0],    # bag {2, 2, 5}: the mean counts the repeated id twice
                        [0, 0, 0, 0, 0, 0, 0, 0],    # every field empty or OOV: the id-0 rows
                        [10, 6, 6, 6, 6, 0, 2, 1]])
    out = emb(cat, torch.zeros(3, 2))
    assert out.shape == (3, 6, 5)
    row = lambda f, i: table[offset[f] + i]  # noqa: E731
    assert torch.allclose(out[0, 1], (2 * row(1, 2) + row(1, 5)) / 3)
    assert torch.allclose(out[0, 3], row(3, 1))  # one non-zero id in a bag of 2: that id's row
    assert torch.allclose(out[2, 3], (row(3, 2) + row(3, 1)) / 2)
    for f in range(4):
        assert torch.equal(out[1, f], row(f, 0))  # an empty bag is the field's OOV row, like a single id 0
    # single-valued fields inside a bagged layout are their plain lookups, bit for bit
    assert torch.equal(out[:, 0], table[cat[:, 0]]) and torch.equal(out[:, 2], table[18 + cat[:, 5]])
    # gradients reach every pooled id and, for the empty bags, the OOV rows
    out[:, :4].sum().backward()
    touched = (emb.table.weight.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert {11 + 2, 11 + 5, 11 + 6, 23 + 1, 23 + 2, 11, 23} <= set(touched)
    assert 11 + 1 not in touched  # never in a bag


def test_all_bags_of_one_take_the_plain_lookup_bit_for_bit():
    plain = FeatureLayout(cardinalities=(11, 7, 5), n_dense=1)
    ones = FeatureLayout(cardinalities=(11, 7, 5), n_dense=1, bag_sizes=(1, 1, 1))
    cat = torch.stack([torch.randint(0, c, (16,)) for c in plain.cardinalities], 1)
    dense = torch.randn(16, 1)
    for norm in (False, True):
        torch.manual_seed(3)
        a = FeatureEmbedding(plain, 8, field_norm=norm)
        torch.manual_seed(3)
        b = FeatureEmbedding(ones, 8, field_norm=norm)
        assert b.bag is None and torch.equal(a(cat, dense), b(cat, dense))
        if not norm:  # the lookup itself, as before bags existed: table[id + field offset]
            assert torch.equal(b(cat, dense)[:, :3], b.table.weight[cat + torch.tensor([0, 11, 18])])


def test_pooling_stays_float32_under_autocast():
    emb = FeatureEmbedding(BAGGED, 4)
    cat, dense, _ = bag_batch(BAGGED, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emb(cat, dense)
    assert out.dtype == torch.float32
    assert torch.allclose(out, emb(cat, dense))


@pytest.mark.parametrize("name", available_models())
def test_every_model_trains_on_a_layout_with_bags(name):
    torch.manual_seed(0)
    model = build_model(name, BAGGED)
    cat, dense, y = bag_batch(BAGGED, 32)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = F.binary_cross_entropy_with_logits(model(cat, dense), y) + model.auxiliary_loss(y)
        opt.zero_grad()
        loss.backward()
        assert model.embedding.table.weight.grad is not None
        opt.step()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        out = model(cat, dense)
    assert out.shape == (32,) and torch.isfinite(out).all()
