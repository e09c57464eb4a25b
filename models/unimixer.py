"""UniMixer and UniMixing-Lite (Kuaishou, arXiv 2604.00590v2; spec §4).

* Tokenizer §3.2: RankMixer-style concat → T segments → token-specific projection → X ∈ [B, T, D].
* UniMixing §3.3.3–3.3.5: flatten X (length T·D, token-major by default, ``flatten_order="channel"`` for the
  production code's channel-major order), cut into M = T·D / B_s blocks of size B_s (``block_size``, free of
  T; must divide T·D):
  ``z_i = x_i W_B^i`` (local, (M, B_s, B_s)), ``z~_j = Σ_i W_G[j,i] z_i`` (global, (M, M)).
  Both matrices are symmetrised ``(W + Wᵀ)/2``, divided by the temperature τ and Sinkhorn-normalised in log
  space (fp32, ``sinkhorn_iters`` iterations): ``W = exp(SK(W̃/τ))``.
* UniMixing-Lite §3.3.7: ``W_B^i = SK(sym(Σ_ℓ ω_i^ℓ Z_ℓ)/τ)`` with b = ``num_basis`` shared bases
  Z ∈ (b, B_s, B_s) and per-block coefficients ω ∈ (M, b) ([I] ω un-normalised); low-rank global
  ``W_G = SK(sym(A Bᵀ)/τ)``, A, B ∈ (M, r), r = ``rank`` (default max(1, M/8)).
* Temperature: linear annealing τ_start → τ_end over ``tau_anneal_steps`` training forwards; the step is a
  registered buffer (part of the checkpoint) and advances only in training forwards. τ(step) is used by
  the forward at that step.
* No train/eval mismatch: eval forwards use exactly the same function (same symmetrisation, τ(step),
  Sinkhorn iterations). Eager eval forwards cache the normalised matrices; the cache is dropped by any
  optimizer step (a global ``torch.optim`` step hook: fused optimizers do not bump parameter versions), by
  ``train()``/``eval()``, and by any in-place write to a parameter or to the τ step (version counters).
* Sinkhorn: ``sinkhorn_iters`` (None = :func:`sinkhorn_iterations` of the smallest τ of the schedule) so both
  marginals stay within 0.05 of 1; the global matrix ends on its rows (it weights outputs by rows), the
  local ones on their columns.
* Block (§3.3): ``O = pSwiGLU(RMSNorm(u + UniMixing(u)))`` with token-specific SwiGLU (biases), hidden
  ``ffn_ratio·D``.
* SiameseNorm §3.4: ``X̄_0 = Ȳ_0 = X``; ``O = Block(X̄ + RMSNorm(Ȳ))``; ``X̄ ← RMSNorm(X̄ + O)``;
  ``Ȳ ← Ȳ + O``; output ``X̄_L + RMSNorm(Ȳ_L)`` → mean over tokens → tower.

[I] raw mixing logits are initialised N(0, ``mixing_init_std``²); nothing in the sources fixes this.
FLOPs per example (eval, cached matrices): tokenizer + L·(2·M·B_s² + 2·M²·B_s + 6·T·D·h) + tower.
The per-step matrix composition (Lite: 2·M·b·B_s² + 2·M²·r) is batch-independent and not counted.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .base import FeatureLayout, RankingModel, as_int_tuple, check, inherits_keywords
from .layers import ConcatTokenizer, FeatureEmbedding, PerTokenSwiGLU, Tower, pool_tokens, pooled_width
from .mixing import global_local_mix, log_sinkhorn, sinkhorn_iterations
from .moe import SPMoESwiGLU
from .rankmixer import check_token_config

# Bumped after every optimizer step anywhere in the process: fused optimizers write parameters without bumping
# their version counters, so versions alone cannot tell an eval cache that the weights changed.
_STEPS = itertools.count()
_optimizer_steps = [next(_STEPS)]
register_optimizer_step_post_hook(lambda *_: _optimizer_steps.__setitem__(0, next(_STEPS)))


class UniMixing(nn.Module):
    """Learnable global × local mixing. Shapes: [B, T, D] (+ τ) -> [B, T, D]."""

    def __init__(
        self,
        num_tokens: int,
        d_model: int,
        block_size: int,
        lite: bool = False,
        num_basis: int = 4,
        rank: int | None = None,
        sinkhorn_iters: int = 3,
        symmetric: bool = True,
        flatten_order: str = "token",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        n = num_tokens * d_model
        check(block_size >= 1 and n % block_size == 0,
              f"block_size ({block_size}) must divide num_tokens*d_model ({n}); allowed: divisors of {n}")
        check(flatten_order in ("token", "channel"), f"flatten_order must be one of ['channel', 'token'], got {flatten_order!r}")
        check(sinkhorn_iters >= 1, f"sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
        self.T, self.D, self.Bs, self.M = num_tokens, d_model, block_size, n // block_size
        self.lite, self.iters, self.symmetric, self.order = lite, sinkhorn_iters, symmetric, flatten_order
        m, bs = self.M, block_size
        if lite:
            check(num_basis >= 1, f"num_basis must be >= 1, got {num_basis}")
            r = rank if rank is not None else max(1, m // 8)
            check(1 <= r <= m, f"rank must be in [1, M={m}] (M = num_tokens*d_model/block_size), got {rank}")
            self.rank = r
            self.basis = nn.Parameter(torch.randn(num_basis, bs, bs) * init_std)
            self.coef = nn.Parameter(torch.randn(m, num_basis) / num_basis**0.5)
            self.global_a = nn.Parameter(torch.randn(m, r) * (init_std / r**0.5) ** 0.5)
            self.global_b = nn.Parameter(torch.randn(m, r) * (init_std / r**0.5) ** 0.5)
        else:
            self.local_logits = nn.Parameter(torch.randn(m, bs, bs) * init_std)
            self.global_logits = nn.Parameter(torch.randn(m, m) * init_std)
        self._cache: tuple | None = None

    def raw_logits(self) -> tuple[Tensor, Tensor]:
        """Un-normalised (global [M, M], local [M, B_s, B_s]) logits before symmetrisation."""
        if self.lite:
            local = torch.einsum("mk,kij->mij", self.coef, self.basis)
            glob = self.global_a @ self.global_b.T
            return glob, local
        return self.global_logits, self.local_logits

    def matrices(self, tau: Tensor | float) -> tuple[Tensor, Tensor]:
        """Doubly-stochastic (W_G [M, M], W_B [M, B_s, B_s]) at temperature τ (a float or a 0-dim tensor)."""
        glob, local = self.raw_logits()
        if self.symmetric:
            glob = 0.5 * (glob + glob.T)
            local = 0.5 * (local + local.transpose(-1, -2))
        return (log_sinkhorn(glob / tau, self.iters, last="rows").exp(),
                log_sinkhorn(local / tau, self.iters, last="cols").exp())

    def _eval_matrices(self, tau: Tensor | float, tau_key: tuple = ()) -> tuple[Tensor, Tensor]:
        """:meth:`matrices`, cached across eager eval forwards (host-side key: no device sync)."""
        key = (tau_key if isinstance(tau, Tensor) else tau, _optimizer_steps[0],
               tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.matrices(tau))
        return self._cache[1]

    def train(self, mode: bool = True) -> UniMixing:
        self._cache = None
        return super().train(mode)

    def flatten(self, x: Tensor) -> Tensor:
        if self.order == "channel":
            x = x.transpose(1, 2)
        return x.reshape(x.shape[0], self.M, self.Bs)

    def unflatten(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        if self.order == "channel":
            return z.reshape(b, self.D, self.T).transpose(1, 2)
        return z.reshape(b, self.T, self.D)

    def mix_with(self, x: Tensor, global_matrix: Tensor, local_matrices: Tensor | None) -> Tensor:
        """Apply given matrices (debug / unification tests). [B, T, D] -> [B, T, D]."""
        return self.unflatten(global_local_mix(self.flatten(x), global_matrix, local_matrices))

    def forward(self, x: Tensor, tau: Tensor | float, tau_key: tuple = ()) -> Tensor:
        """x [B, T, D], τ (0-dim tensor or float; ``tau_key`` identifies a tensor τ for the eval cache)."""
        if self.training or torch.compiler.is_compiling():
            wg, wb = self.matrices(tau)
        else:
            wg, wb = self._eval_matrices(tau, tau_key)
        wg, wb = wg.to(x.dtype), wb.to(x.dtype)
        return self.mix_with(x, wg, wb)

    def flops(self) -> int:
        return 2 * self.M * self.Bs * self.Bs + 2 * self.M * self.M * self.Bs


class UniMixerBlock(nn.Module):
    """Mixing → residual + RMSNorm → per-token SwiGLU (or its SP-MoE, ``moe`` = (E, k, α, impl)).
    [B, T, D] -> [B, T, D]; ``last_mask`` holds the MoE's active-expert mask [B, T, E] of the last forward."""

    def __init__(self, num_tokens: int, d_model: int, ffn_hidden: int, dropout: float = 0.0,
                 moe: tuple | None = None, **mixing_kw):
        super().__init__()
        self.mixing = UniMixing(num_tokens, d_model, **mixing_kw)
        self.norm = nn.RMSNorm(d_model)
        if moe is None:
            self.ffn = PerTokenSwiGLU(num_tokens, d_model, ffn_hidden, bias=True, dropout=dropout)
        else:
            e, k, alpha, impl = moe
            self.ffn = SPMoESwiGLU(num_tokens, d_model, ffn_hidden, e, k, alpha, bias=True, down_init_scale=1.0,
                                   dropout=dropout, impl=impl)
        self.last_mask: Tensor | None = None

    def forward(self, u: Tensor, tau: Tensor | float, tau_key: tuple = ()) -> Tensor:
        y = self.ffn(self.norm(u + self.mixing(u, tau, tau_key)))
        if isinstance(self.ffn, SPMoESwiGLU):
            y, self.last_mask = y
        return y

    def flops(self) -> int:
        return self.mixing.flops() + self.ffn.flops()

    def active_flops(self) -> int:
        ffn = self.ffn.active_flops() if isinstance(self.ffn, SPMoESwiGLU) else self.ffn.flops()
        return self.mixing.flops() + ffn


class UniMixer(RankingModel):
    """Args: embedding_dim, num_tokens (T), d_model (D), num_layers, block_size (B_s | T·D), ffn_ratio,
    tau_start, tau_end, tau_anneal_steps, sinkhorn_iters (None = enough for the smallest τ), symmetric,
    flatten_order, mixing_init_std, pooling ("mean" over tokens [P] | "flatten": the T·D vector [I]), tower_dims,
    dropout, tower_batch_norm (BatchNorm in the tower's hidden layers [I]), embedding_norm, embedding_init_std,
    zero_bias_init (tokenizer and SwiGLU biases; the defaults are the "plain init", no field LayerNorm, which
    beat the field LayerNorm on 3 seeds of Frappe and of the synthetic data: docs/models.md, "embedding_norm"),
    shared_projection; per-token SP-MoE on the SwiGLU (as in TokenMixer-Large): num_experts (1 = dense), top_k,
    moe_alpha, moe_impl; Lite only: num_basis (b), rank (r, None = M/8)."""

    name = "unimixer"
    _lite = False

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 8,
        num_tokens: int = 4,
        d_model: int = 32,
        num_layers: int = 2,
        block_size: int = 4,
        ffn_ratio: float = 2,
        tau_start: float = 1.0,
        tau_end: float = 0.05,
        tau_anneal_steps: int = 1000,
        sinkhorn_iters: int | None = None,
        symmetric: bool = True,
        flatten_order: str = "token",
        mixing_init_std: float = 1.0,
        pooling: str = "mean",
        tower_dims: tuple[int, ...] = (64,),
        dropout: float = 0.0,
        tower_batch_norm: bool = False,
        embedding_norm: bool = False,
        embedding_init_std: float = 0.01,
        zero_bias_init: bool = True,
        shared_projection: bool = False,
        num_experts: int = 1,
        top_k: int = 1,
        moe_alpha: float = 1.0,
        moe_impl: str = "sparse",
        num_basis: int = 4,
        rank: int | None = None,
    ) -> None:
        super().__init__(layout)
        self._store_config(locals())
        if not self._lite:
            self._hparams.pop("num_basis", None)
            self._hparams.pop("rank", None)
        check_token_config(layout, embedding_dim, num_tokens, d_model, num_layers)
        check(tau_start > 0 and tau_end > 0, f"tau_start and tau_end must be > 0, got {tau_start}, {tau_end}")
        check(tau_anneal_steps >= 0, f"tau_anneal_steps must be >= 0, got {tau_anneal_steps}")
        check(ffn_ratio > 0, f"ffn_ratio must be > 0, got {ffn_ratio}")
        check(pooling in ("mean", "flatten"), f"pooling must be one of ['flatten', 'mean'], got {pooling!r}")
        tower_dims = as_int_tuple("tower_dims", tower_dims) if tower_dims else ()
        self.T, self.D = num_tokens, d_model
        self.tau_start, self.tau_end, self.tau_anneal_steps = float(tau_start), float(tau_end), int(tau_anneal_steps)
        self.embedding = FeatureEmbedding(layout, embedding_dim, init_std=embedding_init_std, field_norm=embedding_norm)
        self.tokenizer = ConcatTokenizer(layout.num_fields, embedding_dim, num_tokens, d_model, shared_projection)
        hidden = max(1, int(round(ffn_ratio * d_model)))
        check(num_experts >= 1, f"num_experts must be >= 1, got {num_experts}")
        check(num_experts == 1 or hidden % num_experts == 0,
              f"num_experts ({num_experts}) must divide the SwiGLU hidden width ({hidden} = ffn_ratio·d_model)")
        moe = (num_experts, top_k, moe_alpha, moe_impl) if num_experts > 1 else None
        if sinkhorn_iters is None:
            sinkhorn_iters = sinkhorn_iterations(min(tau_start, tau_end))
        mix_kw = dict(block_size=block_size, lite=self._lite, num_basis=num_basis, rank=rank,
                      sinkhorn_iters=sinkhorn_iters, symmetric=symmetric, flatten_order=flatten_order,
                      init_std=mixing_init_std)
        self.blocks = nn.ModuleList(
            UniMixerBlock(num_tokens, d_model, hidden, dropout, moe, **mix_kw) for _ in range(num_layers)
        )
        self.norms_x = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(num_layers))
        self.norms_y = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(num_layers))
        self.norm_out = nn.RMSNorm(d_model)
        self.pooling = pooling
        self.tower = Tower(pooled_width(pooling, num_tokens, d_model), tower_dims, dropout=dropout,
                           batch_norm=tower_batch_norm)
        self.register_buffer("tau_step", torch.tensor(0, dtype=torch.long))
        if zero_bias_init:
            self._zero_biases(self.tokenizer, self.blocks)

    def temperature(self) -> float:
        """τ at the current step (linear annealing), read on the host; forwards use :meth:`tau`."""
        return float(self.tau())

    def tau(self) -> Tensor:
        """τ at the current step as a 0-dim float64 tensor (no host sync)."""
        if self.tau_anneal_steps == 0:
            return torch.full((), self.tau_end, dtype=torch.float64, device=self.tau_step.device)
        frac = (self.tau_step.double() / self.tau_anneal_steps).clamp(max=1.0)
        return self.tau_start + (self.tau_end - self.tau_start) * frac

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        tau, tau_key = self.tau(), (self.tau_step.data_ptr(), self.tau_step._version)
        x = self.tokenizer(self.embedding(categorical, dense))
        xbar, ybar = x, x
        for blk, nx, ny in zip(self.blocks, self.norms_x, self.norms_y, strict=True):
            o = blk(xbar + ny(ybar), tau, tau_key)
            xbar = nx(xbar + o)
            ybar = ybar + o
        out = xbar + self.norm_out(ybar)
        if self.training:
            with torch.no_grad():
                self.tau_step.add_(1)
        masks = [blk.last_mask for blk in self.blocks if blk.last_mask is not None]
        if masks:
            with torch.no_grad():  # per-expert load: fraction of token rows each expert ran on
                self._load = torch.stack([m.float().mean((0, 1)) for m in masks]).mean(0)
        return self.tower(pool_tokens(out, self.pooling))

    def routing_stats(self) -> dict[str, float | list[float]]:
        """Achieved active-expert ratio (incl. the shared expert) of the last forward (1.0 when dense) and the
        per-expert load, averaged over the layers."""
        e, k = self._hparams["num_experts"], self._hparams["top_k"]
        load = self._load.tolist() if getattr(self, "_load", None) is not None else [1.0] * e
        return {"active_ratio": sum(load) / e, "target_active_ratio": k / e if e > 1 else 1.0, "expert_load": load}

    def _flops(self) -> int:
        return self.tokenizer.flops() + sum(b.flops() for b in self.blocks) + self.tower.flops()

    def active_flops_per_example(self) -> int:
        return self.tokenizer.flops() + sum(b.active_flops() for b in self.blocks) + self.tower.flops()


class UniMixerMoE(UniMixer):
    """UniMixer with per-token SP-MoE SwiGLUs on by default ([I] TokenMixer-Large's layout: E=4, 1 shared +
    top-1 routed, α=2), sparse in training and inference."""

    name = "unimixer_moe"

    @inherits_keywords(UniMixer)
    def __init__(self, layout: FeatureLayout, *, num_experts: int = 4, top_k: int = 2, moe_alpha: float = 2.0,
                 **kwargs: Any) -> None:
        super().__init__(layout, num_experts=num_experts, top_k=top_k, moe_alpha=moe_alpha, **kwargs)


class UniMixingLite(UniMixer):
    """UniMixer with UniMixing-Lite mixers (basis-composed local, low-rank global)."""

    name = "unimixer_lite"
    _lite = True
