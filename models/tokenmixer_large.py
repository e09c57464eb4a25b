"""TokenMixer-Large (ByteDance, arXiv 2602.06563v2; spec §3).

* Tokenization §3.2 Eq. 1–4: fields are split into T−1 contiguous semantic groups ([I] groups of whole
  fields, sizes differing by at most one, zero-padded to the largest); each group has its own 2-layer MLP
  to width D (one einsum over groups), plus a global token ``X_G = MLP_g(concat of all fields)`` placed first.
* Block §3.3 Eq. 12/16, pre-RMSNorm, no biases in the block::

      H      = Mix(X)                                   [B, H, T·D/H]
      H'     = H + pSwiGLU_mix(RMSNorm(H))              (H weight sets, width T·D/H, hidden n·T·D/H [I])
      X_rev  = Revert(H')                               [B, T, D]
      X_next = X + pSwiGLU_orig(RMSNorm(X_rev))         (T weight sets, hidden n·D)

  H (``num_heads``) is independent of T (D must be divisible by H).
* Depth aids §3.4: inter-layer residual ``X^(ℓ) += X^(ℓ−r)`` every r = ``inter_residual_every`` blocks,
  never at the last block; an auxiliary tower on the (final-RMSNorm-free, pooled as the output [I]) representation at
  those positions, loss weight ``aux_loss_weight`` ([I] λ = 0.1); W_down init scaled by ``down_init_scale``
  (0.01, Table 14).
* SP-MoE §3.5 Eq. 19–21 (``num_experts`` > 1): each token's SwiGLU hidden sliced into E experts, expert 0
  shared and always on, softmax router over the E−1 routed ones, top-(k−1), gate scale α; applied to both
  SwiGLUs of every block (as reimplementations do). Active ratio = k/E.
* Output [I]: final RMSNorm, mean over all T tokens (``pooling="mean"``; ``"global"`` reads the global
  token; ``"flatten"`` feeds the T·D vector) → tower.

Auxiliary towers need labels: pass ``labels=`` to ``forward`` or to ``auxiliary_loss``; without labels the
auxiliary BCE is 0.
FLOPs per example (dense, H = T): tokenizer + L·12·n·T·D² + routers + towers (aux towers excluded: they only
run in training). With SP-MoE the sparse path computes k/E of the SwiGLU work (``moe_impl="masked"``, the
reference, computes all of it); :meth:`active_flops_per_example` counts the active experts only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import FeatureLayout, RankingModel, as_int_tuple, check, inherits_keywords
from .layers import MLP, FeatureEmbedding, PerTokenLinear, PerTokenSwiGLU, Tower, pool_tokens, pooled_width
from .mixing import token_mix, token_revert
from .moe import SPMoESwiGLU


class GroupTokenizer(nn.Module):
    """Per-group MLP tokens + optional global token. [B, F, d] -> [B, T, D] (T = groups + global)."""

    def __init__(self, num_fields: int, field_dim: int, num_groups: int, d_model: int, global_token: bool = True):
        super().__init__()
        check(1 <= num_groups <= num_fields, f"number of groups must be in [1, num_fields={num_fields}], got {num_groups}")
        base, extra = divmod(num_fields, num_groups)
        sizes = [base + (1 if g < extra else 0) for g in range(num_groups)]
        gmax = max(sizes)
        idx, start = [], 0
        for s in sizes:
            idx.append(list(range(start, start + s)) + [num_fields] * (gmax - s))  # num_fields = zero row
            start += s
        self.register_buffer("index", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.G, self.F, self.d, self.D, self.gmax = num_groups, num_fields, field_dim, d_model, gmax
        self.group_in = PerTokenLinear(num_groups, gmax * field_dim, d_model)
        self.group_out = PerTokenLinear(num_groups, d_model, d_model)
        self.global_mlp = MLP(num_fields * field_dim, (d_model,), d_model, activation="gelu") if global_token else None

    def forward(self, emb: Tensor) -> Tensor:
        b = emb.shape[0]
        padded = torch.cat([emb, emb.new_zeros(b, 1, self.d)], dim=1)
        groups = padded[:, self.index].reshape(b, self.G, self.gmax * self.d)
        toks = self.group_out(torch.nn.functional.gelu(self.group_in(groups)))
        if self.global_mlp is None:
            return toks
        return torch.cat([self.global_mlp(emb.flatten(1)).unsqueeze(1), toks], dim=1)

    def flops(self) -> int:
        f = self.group_in.flops() + self.group_out.flops()
        return f + (self.global_mlp.flops() if self.global_mlp is not None else 0)


class _FFN(nn.Module):
    """pSwiGLU or its SP-MoE version; returns (y, active mask or None)."""

    def __init__(self, tokens: int, width: int, hidden: int, num_experts: int, top_k: int, alpha: float,
                 down_init_scale: float, dropout: float, impl: str = "sparse"):
        super().__init__()
        if num_experts > 1:
            self.moe = SPMoESwiGLU(tokens, width, hidden, num_experts, top_k, alpha, bias=False,
                                   down_init_scale=down_init_scale, dropout=dropout, impl=impl)
            self.ffn = None
        else:
            self.moe = None
            self.ffn = PerTokenSwiGLU(tokens, width, hidden, bias=False, down_init_scale=down_init_scale, dropout=dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.moe is not None:
            return self.moe(x)
        return self.ffn(x), None

    def flops(self) -> int:
        return (self.moe or self.ffn).flops()

    def active_flops(self) -> int:
        return self.moe.active_flops() if self.moe is not None else self.ffn.flops()


class TokenMixerLargeBlock(nn.Module):
    """Mix → pSwiGLU+res → Revert → pSwiGLU+res (pre-RMSNorm). [B, T, D] -> [B, T, D]."""

    def __init__(self, num_tokens: int, d_model: int, num_heads: int, ffn_ratio: float, num_experts: int = 1,
                 top_k: int = 1, alpha: float = 1.0, down_init_scale: float = 0.01, dropout: float = 0.0,
                 moe_impl: str = "sparse"):
        super().__init__()
        self.T, self.H = num_tokens, num_heads
        w = num_tokens * d_model // num_heads
        hid_mix = max(1, int(round(ffn_ratio * w)))
        hid_orig = max(1, int(round(ffn_ratio * d_model)))
        self.norm_mix = nn.RMSNorm(w)
        self.ffn_mix = _FFN(num_heads, w, hid_mix, num_experts, top_k, alpha, down_init_scale, dropout, moe_impl)
        self.norm_orig = nn.RMSNorm(d_model)
        self.ffn_orig = _FFN(num_tokens, d_model, hid_orig, num_experts, top_k, alpha, down_init_scale, dropout,
                             moe_impl)
        self.last_masks: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        h = token_mix(x, self.H)
        y, m1 = self.ffn_mix(self.norm_mix(h))
        h = h + y
        y, m2 = self.ffn_orig(self.norm_orig(token_revert(h, self.T)))
        self.last_masks = [m for m in (m1, m2) if m is not None]
        return x + y

    def flops(self) -> int:
        return self.ffn_mix.flops() + self.ffn_orig.flops()

    def active_flops(self) -> int:
        return self.ffn_mix.active_flops() + self.ffn_orig.active_flops()


class TokenMixerLarge(RankingModel):
    """Args: embedding_dim, num_tokens (T incl. the global token), d_model (D), num_heads (H, divides D),
    num_layers, ffn_ratio (n), inter_residual_every (r, 0 = off), aux_loss_weight, down_init_scale,
    global_token, pooling ("mean" [P] | "global": the global token | "flatten": the T·D vector [I]), tower_dims,
    dropout, tower_batch_norm (BatchNorm in the towers' hidden layers [I]), embedding_norm, embedding_init_std,
    zero_bias_init (tokenizer biases), num_experts (E; 1 = dense),
    top_k (active experts incl. the shared one), moe_alpha (α), moe_impl ("sparse" | "masked" reference)."""

    name = "tokenmixer_large"

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 8,
        num_tokens: int = 4,
        d_model: int = 32,
        num_heads: int = 4,
        num_layers: int = 2,
        ffn_ratio: float = 2,
        inter_residual_every: int = 2,
        aux_loss_weight: float = 0.1,
        down_init_scale: float = 0.01,
        global_token: bool = True,
        pooling: str = "mean",
        tower_dims: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        tower_batch_norm: bool = False,
        embedding_norm: bool = True,
        embedding_init_std: float = 1e-4,
        zero_bias_init: bool = False,
        num_experts: int = 1,
        top_k: int = 1,
        moe_alpha: float = 1.0,
        moe_impl: str = "sparse",
    ) -> None:
        super().__init__(layout)
        self._store_config(locals())
        check(embedding_dim >= 1, f"embedding_dim must be >= 1, got {embedding_dim}")
        check(num_layers >= 1, f"num_layers must be >= 1, got {num_layers}")
        check(num_heads >= 1 and d_model % num_heads == 0,
              f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        n_groups = num_tokens - 1 if global_token else num_tokens
        check(
            1 <= n_groups <= layout.num_fields,
            f"num_tokens ({num_tokens}) must be in [{1 + int(global_token)}, {layout.num_fields + int(global_token)}]"
            f" (one token per group of fields{' + the global token' if global_token else ''})",
        )
        check(pooling in ("mean", "global", "flatten"),
              f"pooling must be one of ['flatten', 'global', 'mean'], got {pooling!r}")
        check(pooling != "global" or global_token, "pooling='global' needs global_token=True")
        check(inter_residual_every >= 0, f"inter_residual_every must be >= 0, got {inter_residual_every}")
        check(num_experts >= 1, f"num_experts must be >= 1, got {num_experts}")
        check(1 <= top_k <= num_experts, f"top_k ({top_k}) must be in [1, num_experts={num_experts}]")
        if num_experts > 1:
            w = num_tokens * d_model // num_heads
            for hid, what in ((int(round(ffn_ratio * w)), "mixed"), (int(round(ffn_ratio * d_model)), "token")):
                check(hid % num_experts == 0,
                      f"num_experts ({num_experts}) must divide the {what} SwiGLU hidden width ({hid} = ffn_ratio·width)")
        tower_dims = as_int_tuple("tower_dims", tower_dims) if tower_dims else ()
        self.T, self.D, self.L = num_tokens, d_model, num_layers
        self.pooling = pooling
        self.embedding = FeatureEmbedding(layout, embedding_dim, init_std=embedding_init_std, field_norm=embedding_norm)
        self.tokenizer = GroupTokenizer(layout.num_fields, embedding_dim, n_groups, d_model, global_token)
        self.blocks = nn.ModuleList(
            TokenMixerLargeBlock(num_tokens, d_model, num_heads, ffn_ratio, num_experts, top_k, moe_alpha,
                                 down_init_scale, dropout, moe_impl)
            for _ in range(num_layers)
        )
        r = self.inter_residual_every = int(inter_residual_every)
        self.residual_layers = [i for i in range(1, num_layers) if r and i % r == 0]  # 1-indexed, not last
        pooled = pooled_width(pooling, num_tokens, d_model)
        self.aux_towers = nn.ModuleDict(
            {str(i): Tower(pooled, tower_dims, dropout=dropout, batch_norm=tower_batch_norm)
             for i in self.residual_layers} if aux_loss_weight > 0 else {}
        )
        self._aux_logit_weight = float(aux_loss_weight)
        self.final_norm = nn.RMSNorm(d_model)
        self.tower = Tower(pooled, tower_dims, dropout=dropout, batch_norm=tower_batch_norm)
        self._load: Tensor | None = None
        if zero_bias_init:
            self._zero_biases(self.tokenizer)  # the blocks have no biases

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        x = self.tokenizer(self.embedding(categorical, dense))
        outs = [x]  # outs[l] = representation after block l
        masks = []
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            masks.extend(blk.last_masks)
            if i in self.residual_layers:
                x = x + outs[i - self.inter_residual_every]
                if self.training and str(i) in self.aux_towers:
                    self._aux_logits.append(self.aux_towers[str(i)](pool_tokens(x, self.pooling)))
            outs.append(x)
        if masks:
            with torch.no_grad():  # per-expert load: fraction of token rows each expert ran on
                self._load = torch.stack([m.float().mean((0, 1)) for m in masks]).mean(0)
        return self.tower(pool_tokens(self.final_norm(x), self.pooling))

    def routing_stats(self) -> dict[str, float | list[float]]:
        """Achieved active-expert ratio (incl. the shared expert) of the last forward (1.0 when dense) and the
        per-expert load (fraction of token rows each expert ran on, averaged over the MoE layers)."""
        e, k = self._hparams["num_experts"], self._hparams["top_k"]
        load = self._load.tolist() if self._load is not None else [1.0] * e
        return {"active_ratio": sum(load) / e, "target_active_ratio": k / e, "expert_load": load}

    def _flops(self) -> int:
        return self.tokenizer.flops() + sum(b.flops() for b in self.blocks) + self.tower.flops()

    def active_flops_per_example(self) -> int:
        return self.tokenizer.flops() + sum(b.active_flops() for b in self.blocks) + self.tower.flops()


class TokenMixerLargeMoE(TokenMixerLarge):
    """TokenMixer-Large with SP-MoE on by default ([I] 1:2 layout: E=4, 1 shared + top-1 routed, α=2)."""

    name = "tokenmixer_large_moe"

    @inherits_keywords(TokenMixerLarge)
    def __init__(self, layout: FeatureLayout, *, num_experts: int = 4, top_k: int = 2, moe_alpha: float = 2.0,
                 **kwargs: Any) -> None:
        super().__init__(layout, num_experts=num_experts, top_k=top_k, moe_alpha=moe_alpha, **kwargs)
