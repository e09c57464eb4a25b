"""Shared substrate (spec §1, §2.1, §7): embeddings, tokenizers, per-token dense layers, MLPs.

All per-token layers keep their weights as ``(T, in, out)`` tensors and run as one einsum over the
token axis (no Python loop over tokens). Every module exposes ``flops()``: forward matmul FLOPs per
example (multiply-add = 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FeatureLayout, check

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _uniform_(t: Tensor, fan_in: int, scale: float = 1.0) -> Tensor:
    bound = scale / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class FeatureEmbedding(nn.Module):
    """One fused table for all categorical fields (per-field offsets) + per-field dense embeddings.

    A multi-hot field (``layout.bag_sizes`` > 1) is mean-pooled over its non-zero ids into one embedding; id
    0 (padding, OOV) is left out of the mean, and a bag with no non-zero id embeds as the field's id-0 (OOV)
    row, exactly what a single-valued field with id 0 gets. Dense field j is embedded as
    ``value * w_j + b_j``. ``field_norm=True`` applies a LayerNorm over d to every field embedding (per-field
    affine): scale-free inputs for models without BatchNorm (see docs/models.md, "embedding_norm").

    Shapes: categorical [B, n_id_columns] int64, dense [B, n_dense] -> [B, F, d] with F = n_cat + n_dense.
    """

    def __init__(self, layout: FeatureLayout, embedding_dim: int, init_std: float = 1e-4, field_norm: bool = False) -> None:
        super().__init__()
        self.field_norm = field_norm
        if field_norm:  # per-field LayerNorm over d with a per-field affine (F, d)
            self.norm_weight = nn.Parameter(torch.ones(layout.num_fields, int(embedding_dim)))
            self.norm_bias = nn.Parameter(torch.zeros(layout.num_fields, int(embedding_dim)))
        check(int(embedding_dim) >= 1, f"embedding_dim must be >= 1, got {embedding_dim}")
        self.layout = layout
        self.embedding_dim = d = int(embedding_dim)
        self.bag = BagPooling(layout) if layout.bag_sizes else None
        if layout.n_cat:
            self.table = nn.Embedding(sum(layout.cardinalities), d)
            nn.init.normal_(self.table.weight, std=init_std)
            offs = [0]
            for c in layout.cardinalities[:-1]:
                offs.append(offs[-1] + c)
            # offset of each id column: its field's (a multi-hot field's columns share one)
            columns = [offs[f] for f in layout.column_fields]
            self.register_buffer("offsets", torch.tensor(columns, dtype=torch.long), persistent=False)
            self.register_buffer("field_offsets", torch.tensor(offs, dtype=torch.long), persistent=False)
        else:
            self.table = None
        if layout.n_dense:
            self.dense_weight = nn.Parameter(torch.randn(layout.n_dense, d) * 0.01)
            self.dense_bias = nn.Parameter(torch.zeros(layout.n_dense, d))

    @property
    def num_fields(self) -> int:
        return self.layout.num_fields

    def forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        parts = []
        if self.table is not None:
            emb = self.table(categorical + self.offsets)  # [B, n_id_columns, d]
            if self.bag is not None:  # all bags of size 1 skip this: the plain lookup is the field embedding
                emb = self.bag(emb, categorical, self.table.weight[self.field_offsets])
            parts.append(emb)
        if self.layout.n_dense:
            parts.append(dense.unsqueeze(-1) * self.dense_weight + self.dense_bias)
        emb = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.field_norm:
            emb = F.layer_norm(emb, (self.embedding_dim,)) * self.norm_weight + self.norm_bias
        return emb

    def flops(self) -> int:
        return 0


class BagPooling(nn.Module):
    """Mean of each categorical field's id-column embeddings over its non-zero ids (multi-hot fields).

    One batched matmul with the ``[n_cat, n_id_columns]`` column-to-field assignment matrix masked by
    ``ids != 0``; fields whose bag holds no non-zero id get ``oov`` (their id-0 row). A single-valued field
    comes out bit-identical to its lookup (weights 1 and 0). The pooling runs in float32 even under autocast,
    like the lookup it replaces; like the lookup, it is embedding work that ``flops_per_example`` leaves out.

    Shapes: emb [B, C, d], ids [B, C] int64, oov [n_cat, d] -> [B, n_cat, d] with C = n_id_columns.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__()
        fields = torch.tensor(layout.column_fields, dtype=torch.long)
        assign = (fields.unsqueeze(0) == torch.arange(layout.n_cat).unsqueeze(1)).float()
        self.register_buffer("assign", assign, persistent=False)  # [n_cat, C]: 1 where column c is field f's

    def forward(self, emb: Tensor, ids: Tensor, oov: Tensor) -> Tensor:
        with torch.autocast(emb.device.type, enabled=False):
            weights = self.assign * (ids != 0).unsqueeze(1).float()  # [B, n_cat, C]
            counts = weights.sum(-1, keepdim=True)  # [B, n_cat, 1] non-zero ids per bag
            pooled = torch.bmm(weights, emb.float()) / counts.clamp(min=1.0)
            return torch.where(counts > 0, pooled, oov.float())


class ConcatTokenizer(nn.Module):
    """RankMixer/UniMixer tokenizer (spec §2.1 Eq. 2, [I] per-token projection).

    Concatenate the F field embeddings (length F·d), zero-pad to T·s, cut into T segments of length s and
    project each with its own ``W_t ∈ R^{s×D}`` (+bias) — one einsum with weight (T, s, D).

    Shapes: [B, F, d] -> [B, T, D].
    """

    def __init__(self, num_fields: int, field_dim: int, num_tokens: int, d_model: int, shared: bool = False):
        super().__init__()
        in_len = num_fields * field_dim
        check(num_tokens >= 1, f"num_tokens must be >= 1, got {num_tokens}")
        check(
            num_tokens <= in_len,
            f"num_tokens ({num_tokens}) must be <= num_fields*embedding_dim ({in_len})",
        )
        self.T, self.D, self.shared = num_tokens, d_model, shared
        self.seg = -(-in_len // num_tokens)
        self.pad = num_tokens * self.seg - in_len
        shape = (self.seg, d_model) if shared else (num_tokens, self.seg, d_model)
        self.weight = nn.Parameter(_uniform_(torch.empty(shape), self.seg))
        self.bias = nn.Parameter(_uniform_(torch.empty(num_tokens, d_model), self.seg))

    def forward(self, emb: Tensor) -> Tensor:
        x = emb.flatten(1)
        if self.pad:
            x = F.pad(x, (0, self.pad))
        x = x.view(x.shape[0], self.T, self.seg)
        if self.shared:
            return x @ self.weight + self.bias
        return torch.einsum("bts,tsd->btd", x, self.weight) + self.bias

    def flops(self) -> int:
        return 2 * self.T * self.seg * self.D


class MLP(nn.Module):
    """Linear (+BatchNorm) + activation (+dropout) stack, optional final Linear to ``out_dim``.

    Shapes: [B, in_dim] -> [B, out_dim or hidden[-1]].
    """

    def __init__(
        self,
        in_dim: int,
        hidden: tuple[int, ...] = (),
        out_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        check(activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        self._mm = 0
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers.append(nn.Linear(a, b))
            self._mm += a * b
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        if out_dim is not None:
            layers.append(nn.Linear(dims[-1], out_dim))
            self._mm += dims[-1] * out_dim
        self.out_dim = out_dim if out_dim is not None else dims[-1]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def flops(self) -> int:
        return 2 * self._mm


class PerTokenLinear(nn.Module):
    """T independent linear maps, one einsum. Shapes: [B, T, d_in] -> [B, T, d_out]."""

    def __init__(self, num_tokens: int, d_in: int, d_out: int, bias: bool = True, init_scale: float = 1.0):
        super().__init__()
        self.T, self.d_in, self.d_out = num_tokens, d_in, d_out
        self.weight = nn.Parameter(_uniform_(torch.empty(num_tokens, d_in, d_out), d_in, init_scale))
        self.bias = nn.Parameter(_uniform_(torch.empty(num_tokens, d_out), d_in)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("btd,tdh->bth", x, self.weight)
        return y + self.bias if self.bias is not None else y

    def flops(self) -> int:
        return 2 * self.T * self.d_in * self.d_out


class PerTokenFFN(nn.Module):
    """RankMixer PFFN (spec §2.2 Eq. 6–9): ``v_t = W_t2·GELU(W_t1·s_t + b_t1) + b_t2``.

    Weights (T, D, h) and (T, h, D). Shapes: [B, T, D] -> [B, T, D].
    """

    def __init__(self, num_tokens: int, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.up = PerTokenLinear(num_tokens, d_model, hidden)
        self.down = PerTokenLinear(num_tokens, hidden, d_model)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))

    def flops(self) -> int:
        return self.up.flops() + self.down.flops()


class PerTokenSwiGLU(nn.Module):
    """Per-token SwiGLU (TokenMixer-Large Eq. 17–18, UniMixer §4.3).

    ``y_t = W_down^t( SiLU(W_gate^t x_t) ⊙ (W_up^t x_t) )``, weights (T, D, h), (T, D, h), (T, h, D).
    ``down_init_scale`` scales the init of W_down (0.01 = TokenMixer-Large small init).
    ``forward(x, hidden_scale)`` optionally multiplies the hidden activations [B, T, h] (used by SP-MoE,
    whose experts are slices of the hidden dimension).

    Shapes: [B, T, D] -> [B, T, D].
    """

    def __init__(
        self,
        num_tokens: int,
        d_model: int,
        hidden: int,
        bias: bool = True,
        down_init_scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check(hidden >= 1, f"SwiGLU hidden width must be >= 1, got {hidden}")
        self.T, self.D, self.h = num_tokens, d_model, hidden
        # up and gate fused into one weight (T, D, 2h): one einsum
        self.up_gate = PerTokenLinear(num_tokens, d_model, 2 * hidden, bias=bias)
        self.down = PerTokenLinear(num_tokens, hidden, d_model, bias=bias, init_scale=down_init_scale)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, hidden_scale: Tensor | None = None) -> Tensor:
        up, gate = self.up_gate(x).chunk(2, dim=-1)
        h = F.silu(gate) * up
        if hidden_scale is not None:
            h = h * hidden_scale
        return self.drop(self.down(h))

    def flops(self) -> int:
        return self.up_gate.flops() + self.down.flops()


def pooled_width(pooling: str, num_tokens: int, d_model: int) -> int:
    """Width of :func:`pool_tokens`'s output: T·D for ``"flatten"``, else D."""
    return num_tokens * d_model if pooling == "flatten" else d_model


def pool_tokens(x: Tensor, pooling: str) -> Tensor:
    """Token outputs [B, T, D] -> the tower input: [B, D] for ``"mean"`` (over tokens) and ``"global"`` (token 0),
    [B, T·D] for ``"flatten"``."""
    if pooling == "flatten":
        return x.flatten(1)
    return x[:, 0] if pooling == "global" else x.mean(dim=1)


class Tower(nn.Module):
    """Task tower: [B, in_dim] -> logits [B]. ``batch_norm`` after each hidden Linear, as in FuxiCTR's MLP block."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64,), dropout: float = 0.0, activation: str = "relu",
                 batch_norm: bool = False):
        super().__init__()
        self.mlp = MLP(in_dim, hidden, 1, activation=activation, dropout=dropout, batch_norm=batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1)

    def flops(self) -> int:
        return self.mlp.flops()
