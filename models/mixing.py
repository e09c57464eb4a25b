"""Token-mixing primitives (spec §2.2, §3.3, §4.2–4.4, §7.2).

* :func:`token_mix` / :func:`token_revert` — RankMixer's parameter-free multi-head mixing and
  TokenMixer-Large's exact inverse, as pure reshapes.
* :func:`global_local_mix` — the unified "global × local" template of UniMixer (§4.4):
  ``Mixing(X) = G · [x_1 W_B^1; ...; x_M W_B^M]``.
* :func:`log_sinkhorn` — Sinkhorn–Knopp normalisation in log space (fp32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def token_mix(x: Tensor, num_heads: int) -> Tensor:
    """RankMixer multi-head token mixing (arXiv 2507.15551 §3.3, Eq. 3–5).

    ``S[h, t·D/H + j] = X[t, h·D/H + j]``: split every token into H chunks, mixed token h concatenates
    chunk h of every token. Shapes: [B, T, D] -> [B, H, T·D/H] (D divisible by H). With H = T the output
    is [B, T, D] and the map is an involution.
    """
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).transpose(1, 2).reshape(b, num_heads, t * d // num_heads)


def token_revert(h: Tensor, num_tokens: int) -> Tensor:
    """Exact inverse of :func:`token_mix` (TokenMixer-Large "Revert", arXiv 2602.06563 §3.3).

    Shapes: [B, H, T·D/H] -> [B, T, D].
    """
    b, heads, w = h.shape
    c = w // num_tokens
    return h.reshape(b, heads, num_tokens, c).transpose(1, 2).reshape(b, num_tokens, heads * c)


def global_local_mix(blocks: Tensor, global_matrix: Tensor, local_matrices: Tensor | None = None) -> Tensor:
    """Unified mixing template (UniMixer arXiv 2604.00590 §3.3.6).

    ``out_j = Σ_i G[j, i] · (x_i W_B^i)``.

    Args:
        blocks: [B, M, Bs] — the flattened input cut into M blocks of size Bs (or local values directly).
        global_matrix: [M, M] (static) or [B, M, M] (input dependent, e.g. FM's X Xᵀ).
        local_matrices: [M, Bs, Bs'] block-specific local maps, or None for identity.

    Returns: [B, M, Bs'].
    """
    z = blocks if local_matrices is None else torch.einsum("bmi,mij->bmj", blocks, local_matrices)
    if global_matrix.dim() == 2:
        return torch.einsum("jm,bmk->bjk", global_matrix, z)
    return torch.bmm(global_matrix, z)


def log_sinkhorn(logits: Tensor, iters: int, last: str = "cols") -> Tensor:
    """Log-space Sinkhorn–Knopp: alternately normalise rows and columns of ``exp(logits)``.

    Shapes: [..., n, n] -> [..., n, n] log of a (nearly) doubly stochastic matrix; computed in fp32.
    ``last`` is the axis normalised last, which then sums to exactly 1 (the other approximately): ``"rows"``
    when the matrix weights outputs by rows (``out_j = Σ_i W[j, i]·z_i``), ``"cols"`` when by columns
    (``z_j = Σ_i x_i·W[i, j]``).
    """
    dims = {"cols": (-1, -2), "rows": (-2, -1)}[last]
    z = logits.float()
    for _ in range(iters):
        for dim in dims:
            z = z - torch.logsumexp(z, dim=dim, keepdim=True)
    return z


def sinkhorn_iterations(min_tau: float, base: int = 3, per_inverse_tau: float = 6.0) -> int:
    """Sinkhorn iterations so both marginals are within ~0.05 of 1 down to temperature ``min_tau``.

    Convergence slows as τ falls (logits/τ sharpen towards a permutation): N(0, 1) symmetric logits at
    τ = 0.05 need ~100 iterations (3 left row sums off by up to 1.9), at τ = 1 a handful.
    """
    return max(base, math.ceil(per_inverse_tau / min_tau))


def token_mix_permutation(num_tokens: int) -> Tensor:
    """TokenMixer (H = T) as a chunk-level permutation matrix G ∈ {0,1}^{T²×T²} (UniMixer §3.3.2).

    Blocks are the T² chunks of width D/T in token-major flatten order; ``G[j, i] = 1`` where output block
    ``j = h·T + t`` takes input block ``i = t·T + h``. G is symmetric and its own inverse.
    """
    t = num_tokens
    idx = torch.arange(t * t)
    src = (idx % t) * t + idx // t  # j = h*T + t  <-  i = t*T + h
    g = torch.zeros(t * t, t * t)
    g[idx, src] = 1.0
    return g
