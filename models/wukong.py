"""Wukong (Zhang et al., Meta, arXiv 2403.02545v4, ICML 2024; spec §5).

* Embedding §3.2 [I on public data]: one d-dim embedding per field (categorical lookup; dense value × vector
  + bias) → X_0 ∈ [B, n, d].
* Layer §3.3: ``X_{i+1} = LN_d( concat(FMB(X_i), LCB(X_i)) + res(X_i) )`` with concatenation along the
  embedding axis; ``res`` is a learned linear compression ``(n_F+n_L) × n_i`` on the embedding axis when
  n_i ≠ n_F + n_L (§3.3), identity otherwise; LN over d [I].
* FMB §3.4/§3.6: optimized FM ``FM(X) = X (Xᵀ Y)``, static learnable ``Y ∈ R^{n_i×k}`` [I; attentive Y not
  implemented], computed as ``Xᵀ Y`` first (O(n·k·d)); ``reshape(MLP(LN(flatten(FM(X)))), n_F, d)``;
  MLP hidden ``fmb_mlp_dims`` (ReLU) then a linear to n_F·d.
* LCB §3.5: ``W_L X``, ``W_L ∈ R^{n_L×n_i}``.
* Top: flatten X_l → MLP ``top_mlp_dims`` → logit.

Shapes: X_i [B, n_i, d]; FM(X) [B, n_i, k]; logits [B].
FLOPs/example per layer: 4·n_i·k·d + 2(n_i·k·h_1 + … + h_m·n_F·d) + 2·n_L·n_i·d (+ 2·(n_F+n_L)·n_i·d for
the residual projection) ; plus the top MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FeatureLayout, RankingModel, as_int_tuple, check
from .layers import MLP, FeatureEmbedding, _uniform_


def optimized_fm(x: Tensor, y: Tensor) -> Tensor:
    """Wukong optimized FM ``X (Xᵀ Y)``: x [B, n, d], y [n, k] -> [B, n, k] (Xᵀ Y computed first)."""
    return torch.bmm(x, torch.einsum("bnd,nk->bdk", x, y))


class WukongLayer(nn.Module):
    """FMB ∥ LCB + residual + LN(d). [B, n_in, d] -> [B, n_F + n_L, d]."""

    def __init__(self, n_in: int, d: int, n_fm: int, n_lcb: int, fm_rank: int, mlp_dims: tuple[int, ...],
                 dropout: float = 0.0):
        super().__init__()
        self.n_in, self.d, self.n_fm, self.n_lcb, self.k = n_in, d, n_fm, n_lcb, fm_rank
        n_out = n_fm + n_lcb
        self.y = nn.Parameter(_uniform_(torch.empty(n_in, fm_rank), n_in))
        self.fm_norm = nn.LayerNorm(n_in * fm_rank)
        self.fm_mlp = MLP(n_in * fm_rank, mlp_dims, n_fm * d, dropout=dropout)
        self.lcb = nn.Parameter(_uniform_(torch.empty(n_lcb, n_in), n_in)) if n_lcb else None
        self.res = nn.Parameter(_uniform_(torch.empty(n_out, n_in), n_in)) if n_in != n_out else None
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        fm = optimized_fm(x, self.y)
        parts = [self.fm_mlp(self.fm_norm(fm.flatten(1))).view(b, self.n_fm, self.d)]
        if self.lcb is not None:
            parts.append(torch.einsum("ln,bnd->bld", self.lcb, x))
        res = x if self.res is None else torch.einsum("mn,bnd->bmd", self.res, x)
        return self.norm(torch.cat(parts, dim=1) + res)

    def flops(self) -> int:
        f = 4 * self.n_in * self.k * self.d + self.fm_mlp.flops() + 2 * self.n_lcb * self.n_in * self.d
        if self.res is not None:
            f += 2 * (self.n_fm + self.n_lcb) * self.n_in * self.d
        return f


class Wukong(RankingModel):
    """Args: embedding_dim (d), num_layers (l), num_fm_embeddings (n_F), num_lcb_embeddings (n_L),
    fm_rank (k), fmb_mlp_dims, top_mlp_dims, dropout."""

    name = "wukong"

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 8,
        num_layers: int = 2,
        num_fm_embeddings: int = 4,
        num_lcb_embeddings: int = 4,
        fm_rank: int = 8,
        fmb_mlp_dims: tuple[int, ...] = (64,),
        top_mlp_dims: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        embedding_norm: bool = True,
    ) -> None:
        super().__init__(layout)
        self._store_config(locals())
        check(embedding_dim >= 1, f"embedding_dim must be >= 1, got {embedding_dim}")
        check(num_layers >= 1, f"num_layers must be >= 1, got {num_layers}")
        check(num_fm_embeddings >= 1, f"num_fm_embeddings must be >= 1, got {num_fm_embeddings}")
        check(num_lcb_embeddings >= 0, f"num_lcb_embeddings must be >= 0, got {num_lcb_embeddings}")
        check(fm_rank >= 1, f"fm_rank must be >= 1, got {fm_rank}")
        fmb_mlp_dims = as_int_tuple("fmb_mlp_dims", fmb_mlp_dims) if fmb_mlp_dims else ()
        top_mlp_dims = as_int_tuple("top_mlp_dims", top_mlp_dims) if top_mlp_dims else ()
        self.embedding = FeatureEmbedding(layout, embedding_dim, field_norm=embedding_norm)
        n_out = num_fm_embeddings + num_lcb_embeddings
        ns = [layout.num_fields] + [n_out] * (num_layers - 1)
        self.layers = nn.ModuleList(
            WukongLayer(n, embedding_dim, num_fm_embeddings, num_lcb_embeddings, fm_rank, fmb_mlp_dims, dropout)
            for n in ns
        )
        self.top = MLP(n_out * embedding_dim, top_mlp_dims, 1, dropout=dropout)

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        x = self.embedding(categorical, dense)
        for layer in self.layers:
            x = layer(x)
        return self.top(x.flatten(1)).squeeze(-1)

    def _flops(self) -> int:
        return sum(layer.flops() for layer in self.layers) + self.top.flops()
