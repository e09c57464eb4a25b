"""Grouped expert dispatch: both shape modes (cut on CPU, static on accelerators) equal a per-row reference,
forward and gradients, with inactive assignments present."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixrec.models.dispatch import _gmm, expert_ffn, sparse_ok


@pytest.mark.parametrize("static_shapes", [False, True])
def test_expert_ffn_equals_dense_reference_with_inactive_rows(static_shapes):
    torch.manual_seed(0)
    r, d, h, g = 12, 6, 10, 5  # unaligned widths: padded for the kernel
    x = torch.randn(r, d, requires_grad=True)
    w_in, w_out = torch.randn(g, d, h, requires_grad=True), torch.randn(g, h, d, requires_grad=True)
    b_in, b_out = torch.randn(g, h, requires_grad=True), torch.randn(g, d, requires_grad=True)
    rows = torch.arange(r).repeat_interleave(3)
    experts = torch.randint(0, g, (3 * r,))
    experts[::4] = g  # inactive
    weights = torch.rand(3 * r, requires_grad=True)
    params = (x, w_in, w_out, b_in, b_out, weights)
    # reference: every expert on every row, keep the assigned ones
    dense = torch.einsum("rgh,ghd->rgd", F.gelu(torch.einsum("rd,gdh->rgh", x, w_in) + b_in), w_out) + b_out
    active = experts < g
    ref = torch.zeros(r, d).index_add(0, rows[active], dense[rows[active], experts[active]] * weights[active, None])
    want = torch.autograd.grad((ref * ref.detach()).sum(), params, retain_graph=True)
    # grouped_mm leaves the rows past its last offset unset; freed NaN-filled blocks of their size make that memory
    # likely to hold NaN, so a leak of it into the output or a gradient shows (it once did, in 1 run of ~4)
    for _ in range(20):
        junk = [torch.full((3 * r, width), float("nan")) for width in (8, 16)]
        del junk
        out = expert_ffn(x, rows, experts, weights, w_in, w_out, F.gelu, b_in, b_out, static_shapes=static_shapes)
        assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=1e-4)
        grads = torch.autograd.grad((out * ref.detach()).sum(), params)
        for got, exp in zip(grads, want, strict=True):
            assert torch.isfinite(got).all() and torch.allclose(got, exp, atol=1e-3)


def test_bf16_autocast_runs_the_grouped_matmuls_in_bf16():
    # bf16 training hands the MoE layers fp32 activations under autocast, and grouped_mm is not on autocast's
    # cast list: the dispatch casts itself, so the sparse path stays on (the CUDA kernel is bf16 only)
    torch.manual_seed(0)
    r, d, h, g = 16, 8, 16, 4
    x, w_in, w_out = torch.randn(r, d), torch.randn(g, d, h) / d**0.5, torch.randn(g, h, d) / h**0.5
    rows, experts, weights = torch.arange(r), torch.arange(r) % g, torch.rand(r)
    exact = expert_ffn(x, rows, experts, weights, w_in, w_out, F.gelu)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sparse_ok(x)
        assert _gmm(x, w_in, torch.tensor([4, 8, 12, 16], dtype=torch.int32)).dtype == torch.bfloat16
        for static_shapes in (False, True):
            out = expert_ffn(x, rows, experts, weights, w_in, w_out, F.gelu, static_shapes=static_shapes)
            assert torch.allclose(out.float(), exact, atol=0.05, rtol=0.05)
