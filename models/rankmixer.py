"""RankMixer (Zhu et al., ByteDance, arXiv 2507.15551v3, CIKM 2025).

* Tokenization §3.2 Eq. 2: concatenated field embeddings cut into T segments, per-token projection
  ([I] per-token ``W_t ∈ R^{s×D}``, ``shared_projection=True`` for the shared ablation).
* Block §3.1 Eq. 1 (post-LN):
  ``S = LN(TokenMixing(X) + X)``, ``X' = LN(PFFN(S) + S)``.
* Multi-head token mixing §3.3 Eq. 3–5, parameter free, H = T (so D must be divisible by T).
* Per-token FFN Eq. 6–9 with GELU, hidden k·D (``ffn_ratio`` = k), as one einsum over the token axis.
* Output: mean over tokens → tower → logit.

Shapes: tokens [B, T, D]; logits [B].
FLOPs per example ≈ tokenizer 2·T·s·D + L·4·k·T·D² (Eq. 12) + tower.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import FeatureLayout, RankingModel, as_int_tuple, check
from .layers import ConcatTokenizer, FeatureEmbedding, PerTokenFFN, Tower
from .mixing import token_mix


def check_token_config(layout: FeatureLayout, embedding_dim: int, num_tokens: int, d_model: int, num_layers: int) -> None:
    check(embedding_dim >= 1, f"embedding_dim must be >= 1, got {embedding_dim}")
    check(num_tokens >= 1, f"num_tokens must be >= 1, got {num_tokens}")
    check(d_model >= 1, f"d_model must be >= 1, got {d_model}")
    check(num_layers >= 1, f"num_layers must be >= 1, got {num_layers}")
    check(
        num_tokens <= layout.num_fields * embedding_dim,
        f"num_tokens ({num_tokens}) must be <= num_fields*embedding_dim ({layout.num_fields * embedding_dim})",
    )


class RankMixerBlock(nn.Module):
    """One RankMixer layer. Shapes: [B, T, D] -> [B, T, D]."""

    def __init__(self, num_tokens: int, d_model: int, ffn_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.T = num_tokens
        self.norm_mix = nn.LayerNorm(d_model)
        self.ffn = PerTokenFFN(num_tokens, d_model, ffn_hidden, dropout=dropout)
        self.norm_ffn = nn.LayerNorm(d_model)

    def mix(self, x: Tensor) -> Tensor:
        """Parameter-free token mixing with H = T: [B, T, D] -> [B, T, D]."""
        return token_mix(x, self.T)

    def forward(self, x: Tensor) -> Tensor:
        s = self.norm_mix(self.mix(x) + x)
        return self.norm_ffn(self.ffn(s) + s)

    def flops(self) -> int:
        return self.ffn.flops()


class RankMixer(RankingModel):
    """Dense RankMixer.

    Args:
        embedding_dim: per-field embedding width d_e.
        num_tokens: T (= number of mixing heads H).
        d_model: token width D, must be divisible by T.
        num_layers: L.
        ffn_ratio: k, PFFN hidden = k·D.
        tower_dims: hidden widths of the output tower.
        dropout: dropout on PFFN outputs and in the tower.
        tower_batch_norm: BatchNorm after each hidden Linear of the tower [I].
        shared_projection: share the tokenizer projection across segments (ablation).
        embedding_norm: per-field LayerNorm on the embeddings (docs/models.md); embedding_init_std: the
            embedding table's N(0, std²) init; zero_bias_init: zero tokenizer and PFFN biases at init.
    """

    name = "rankmixer"

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 8,
        num_tokens: int = 4,
        d_model: int = 32,
        num_layers: int = 2,
        ffn_ratio: float = 2,
        tower_dims: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        tower_batch_norm: bool = False,
        embedding_norm: bool = True,
        embedding_init_std: float = 1e-4,
        zero_bias_init: bool = False,
        shared_projection: bool = False,
    ) -> None:
        super().__init__(layout)
        self._store_config(locals())
        check_token_config(layout, embedding_dim, num_tokens, d_model, num_layers)
        check(
            d_model % num_tokens == 0,
            f"d_model ({d_model}) must be divisible by num_tokens ({num_tokens}): RankMixer mixes with H = T heads",
        )
        check(ffn_ratio > 0, f"ffn_ratio must be > 0, got {ffn_ratio}")
        tower_dims = as_int_tuple("tower_dims", tower_dims) if tower_dims else ()
        self.T, self.D = num_tokens, d_model
        self.ffn_hidden = max(1, int(round(ffn_ratio * d_model)))
        self.embedding = FeatureEmbedding(layout, embedding_dim, init_std=embedding_init_std, field_norm=embedding_norm)
        self.tokenizer = ConcatTokenizer(layout.num_fields, embedding_dim, num_tokens, d_model, shared_projection)
        self.blocks = nn.ModuleList(self._make_block() for _ in range(num_layers))
        self.tower = Tower(d_model, tower_dims, dropout=dropout, batch_norm=tower_batch_norm)
        self._dropout = dropout
        if zero_bias_init:
            self._zero_biases(self.tokenizer, self.blocks)

    def _make_block(self) -> nn.Module:
        return RankMixerBlock(self.T, self.D, self.ffn_hidden, self._block_dropout())

    def _block_dropout(self) -> float:
        return float(self._hparams.get("dropout", 0.0))

    def tokens(self, categorical: Tensor, dense: Tensor) -> Tensor:
        """[B, n_cat], [B, n_dense] -> tokens [B, T, D]."""
        return self.tokenizer(self.embedding(categorical, dense))

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        x = self.tokens(categorical, dense)
        for blk in self.blocks:
            x = blk(x)
        return self.tower(x.mean(dim=1))

    def _flops(self) -> int:
        return self.tokenizer.flops() + sum(b.flops() for b in self.blocks) + self.tower.flops()
