"""DNN baseline (YouTube-DNN style; the "DLRM-MLP" / BARS "DNN" baseline).

Concatenate all field embeddings [B, F·d] → MLP (ReLU, optional BatchNorm / dropout) → logit [B].
FLOPs per example = 2·Σ in·out over the MLP's linear layers.
"""

from __future__ import annotations

from torch import Tensor

from .base import FeatureLayout, RankingModel, as_int_tuple, check
from .layers import MLP, FeatureEmbedding


class DNN(RankingModel):
    """Args: embedding_dim, hidden_dims (MLP widths), dropout, batch_norm, activation, linear_init ("torch" |
    "xavier": Xavier-normal weights and zero biases, FuxiCTR's init)."""

    name = "dnn"

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 8,
        hidden_dims: tuple[int, ...] = (64, 64),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
        linear_init: str = "torch",
    ) -> None:
        super().__init__(layout)
        self._store_config(locals())
        check(embedding_dim >= 1, f"embedding_dim must be >= 1, got {embedding_dim}")
        hidden_dims = as_int_tuple("hidden_dims", hidden_dims) if hidden_dims else ()
        self.embedding = FeatureEmbedding(layout, embedding_dim)
        self.mlp = MLP(layout.num_fields * embedding_dim, hidden_dims, 1, activation, dropout, batch_norm)
        self._init_linears(linear_init)

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        return self.mlp(self.embedding(categorical, dense).flatten(1)).squeeze(-1)

    def _flops(self) -> int:
        return self.mlp.flops()
