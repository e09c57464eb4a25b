"""Sparse expert dispatch: run each expert only on the rows routed to it (spec §7.4).

:func:`expert_ffn` sorts the (row, expert) assignments by expert, gathers their inputs, runs one
``torch.nn.functional.grouped_mm`` per layer of the expert FFN (every expert on its own contiguous slice of rows;
the group offsets stay on the device, so nothing syncs with the host), weights the outputs by their gates and
scatter-adds them back. Inactive assignments (gate 0) sort last, past the final offset, where ``grouped_mm``
neither computes nor differentiates them. On CPU they are then cut off (reading the active count there is no
device sync); on an accelerator shapes stay static and those rows, which ``grouped_mm`` leaves unset, are
masked out explicitly (forward and gradients).

``grouped_mm`` has no fp32 meta kernel for ``torch.compile`` in torch 2.13 and its CUDA kernel is bf16 only, so
callers use their masked dense reference while compiling and for non-bf16 accelerator inputs (:func:`sparse_ok`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import flop_registry, register_flop_formula

if torch.ops.aten._grouped_mm.default not in flop_registry:  # torch 2.13's FlopCounterMode does not count it

    @register_flop_formula(torch.ops.aten._grouped_mm, get_raw=True)
    def _grouped_mm_flops(mat_a: Tensor, mat_b: Tensor, offs: Tensor | None = None, *args, **kwargs) -> int:
        """2·rows·K·N over the rows inside the groups (2-D ``mat_a``, 3-D ``mat_b``), else a batched matmul."""
        k, n = mat_b.shape[-2:]
        if offs is not None and mat_a.dim() == 2 and mat_b.dim() == 3:
            rows = int(offs[-1]) if offs.numel() else 0  # read only while counting FLOPs
            return 2 * rows * k * n
        return 2 * mat_a.shape[0] * (mat_a.shape[-2] if mat_a.dim() == 3 else 1) * k * n


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: autocast's where it is on for ``x``'s device (bf16 training feeds the
    MoE layers fp32 activations under autocast), else ``x``'s own."""
    on = torch.is_autocast_enabled(x.device.type)
    return torch.get_autocast_dtype(x.device.type) if on else x.dtype


def sparse_ok(x: Tensor) -> bool:
    """Whether the grouped-matmul path can run on ``x``: eager mode, and CPU (any float dtype) or a bf16 compute
    dtype (the only dtype of the CUDA kernel, SM >= 80; bf16 inputs or bf16 autocast); elsewhere callers use
    their masked reference. Not yet run on a GPU."""
    return not torch.compiler.is_compiling() and (x.device.type == "cpu" or _compute_dtype(x) == torch.bfloat16)


def _gmm(a: Tensor, w: Tensor, offs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Grouped ``a [N, K] @ w[g] [K, N']`` over row groups ``offs``; pads K and N' to multiples of 8 (the kernel
    wants 16-byte strides). -> [N, N']. ``valid`` [N, 1]: rows inside the groups; the kernel leaves the others
    unset (NaN at times) in its output and its input gradient, so they are selected to 0 on both sides (``where``
    drops them in both directions, where ``0 *`` would not)."""
    if valid is not None:
        a = torch.where(valid, a, 0.0)
    k, n = w.shape[-2:]
    pk, pn = -k % 8, -n % 8
    if pk:
        a, w = F.pad(a, (0, pk)), F.pad(w, (0, 0, 0, pk))
    if pn:
        w = F.pad(w, (0, pn))
    dtype = _compute_dtype(a)  # grouped_mm itself is not on autocast's cast list: cast as autocast would
    out = F.grouped_mm(a.to(dtype).contiguous(), w.to(dtype).contiguous(), offs=offs)
    out = out[:, :n] if pn else out
    return out if valid is None else torch.where(valid, out, 0.0)


def expert_ffn(x: Tensor, rows: Tensor, experts: Tensor, weights: Tensor, w_in: Tensor, w_out: Tensor,
               act, b_in: Tensor | None = None, b_out: Tensor | None = None,
               static_shapes: bool | None = None) -> Tensor:
    """``out[r] = Σ_{n: rows[n] = r} weights[n] · FFN_{experts[n]}(x[r])`` computing only active assignments.

    Args:
        x: [R, D] input rows.
        rows, experts, weights: [N] assignments: input row, expert id in ``[0, G)`` (``G`` = inactive), gate.
        w_in [G, D, h_in], w_out [G, h, D], b_in [G, h_in], b_out [G, D]: per-expert weights.
        act: [n, h_in] -> [n, h] (GELU, or SwiGLU on ``[up | gate]``).
        static_shapes: keep the inactive rows (masked) instead of cutting them off; None = on accelerators.

    Returns: [R, D].
    """
    g = w_in.shape[0]
    key, order = torch.sort(experts, stable=True)  # expert-major; inactive (= G) last
    counts = torch.zeros(g + 1, dtype=torch.long, device=x.device).scatter_add_(0, experts, torch.ones_like(experts))
    offs = counts[:g].cumsum(0).to(torch.int32)
    valid = None
    if static_shapes is None:
        static_shapes = x.device.type != "cpu"
    if not static_shapes:  # a CPU count is read without any device sync: drop the inactive rows
        n = int(offs[-1])
        key, order = key[:n], order[:n]
    else:  # static shapes on accelerators: inactive rows stay, masked (their gradients too)
        valid = (key < g).unsqueeze(-1)
    src = rows[order]
    kg = key.clamp(max=g - 1)
    h = _gmm(x[src], w_in, offs, valid)
    if b_in is not None:
        h = h + b_in[kg]
    y = _gmm(act(h), w_out, offs, valid)
    if b_out is not None:
        y = y + b_out[kg]
    y = y * weights[order].unsqueeze(-1).to(y.dtype)
    if valid is not None:
        y = torch.where(valid, y, 0.0)
    return x.new_zeros(x.shape[0], w_out.shape[-1], dtype=y.dtype).index_add_(0, src, y)


def swiglu(h: Tensor) -> Tensor:
    """``[up | gate]`` [n, 2h] -> ``SiLU(gate) ⊙ up`` [n, h]."""
    up, gate = h.chunk(2, dim=-1)
    return F.silu(gate) * up
