"""DCNv2 baseline (Wang et al., "DCN V2", WWW 2021, arXiv 2008.13535, §3 Eq. 1).

Cross layer: ``x_{l+1} = x_0 ⊙ (W x_l + b) + x_l`` on the concatenated embeddings x_0 ∈ [B, F·d];
``low_rank=r`` uses ``W = U Vᵀ`` (§3.2, Eq. 2 without the mixture). Structure (§3.1 Fig. 1):
``"parallel"`` (cross ∥ deep MLP, concatenated → linear), ``"stacked"`` (cross → deep MLP → linear) or
``"crossnet"`` (cross only → linear).

Shapes: x_0 [B, F·d] → logits [B]. FLOPs/example: cross 2·L·(F·d)² (or 4·L·F·d·r) + MLP + final linear.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FeatureLayout, RankingModel, as_int_tuple, check
from .layers import MLP, FeatureEmbedding


class CrossNetV2(nn.Module):
    """Stack of DCNv2 cross layers, full or low rank. [B, n] -> [B, n]."""

    def __init__(self, dim: int, num_layers: int, low_rank: int | None = None):
        super().__init__()
        self.dim, self.L, self.r = dim, num_layers, low_rank
        if low_rank is None:
            self.w = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        else:
            self.v = nn.ModuleList(nn.Linear(dim, low_rank, bias=False) for _ in range(num_layers))
            self.u = nn.ModuleList(nn.Linear(low_rank, dim) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for i in range(self.L):
            wx = self.w[i](x) if self.r is None else self.u[i](self.v[i](x))
            x = x0 * wx + x
        return x

    def flops(self) -> int:
        per = self.dim * self.dim if self.r is None else 2 * self.dim * self.r
        return 2 * self.L * per


class DCNv2(RankingModel):
    """Args: embedding_dim, num_cross_layers, low_rank (None = full rank), structure
    ("parallel" | "stacked" | "crossnet"), dnn_dims, dropout, batch_norm, linear_init ("torch" | "xavier":
    Xavier-normal weights and zero biases, FuxiCTR's init)."""

    name = "dcnv2"

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 8,
        num_cross_layers: int = 2,
        low_rank: int | None = None,
        structure: str = "parallel",
        dnn_dims: tuple[int, ...] = (64, 64),
        dropout: float = 0.0,
        batch_norm: bool = False,
        linear_init: str = "torch",
    ) -> None:
        super().__init__(layout)
        self._store_config(locals())
        structures = ("crossnet", "parallel", "stacked")
        check(structure in structures, f"structure must be one of {list(structures)}, got {structure!r}")
        check(num_cross_layers >= 1, f"num_cross_layers must be >= 1, got {num_cross_layers}")
        check(low_rank is None or low_rank >= 1, f"low_rank must be None or >= 1, got {low_rank}")
        check(embedding_dim >= 1, f"embedding_dim must be >= 1, got {embedding_dim}")
        dnn_dims = as_int_tuple("dnn_dims", dnn_dims) if dnn_dims else ()
        check(structure == "crossnet" or dnn_dims, f"dnn_dims must be non-empty for structure={structure!r}")
        n = layout.num_fields * embedding_dim
        self.structure = structure
        self.embedding = FeatureEmbedding(layout, embedding_dim)
        self.cross = CrossNetV2(n, num_cross_layers, low_rank)
        if structure == "crossnet":
            self.dnn = None
            head_in = n
        elif structure == "stacked":
            self.dnn = MLP(n, dnn_dims, None, dropout=dropout, batch_norm=batch_norm)
            head_in = dnn_dims[-1]
        else:
            self.dnn = MLP(n, dnn_dims, None, dropout=dropout, batch_norm=batch_norm)
            head_in = n + dnn_dims[-1]
        self.head = nn.Linear(head_in, 1)
        self._init_linears(linear_init)

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        x0 = self.embedding(categorical, dense).flatten(1)
        c = self.cross(x0)
        if self.structure == "stacked":
            h = self.dnn(c)
        elif self.structure == "parallel":
            h = torch.cat([c, self.dnn(x0)], dim=1)
        else:
            h = c
        return self.head(h).squeeze(-1)

    def _flops(self) -> int:
        return self.cross.flops() + (self.dnn.flops() if self.dnn is not None else 0) + 2 * self.head.in_features
