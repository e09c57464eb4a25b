"""RankMixer Sparse-MoE variant (arXiv 2507.15551v3 §3.4, Eq. 10–11; spec §2.3).

Same tokenizer, token mixing and post-LN as :mod:`.rankmixer`; the PFFN of every token is replaced by
``num_experts`` per-token experts with ReLU routing (no softmax, no top-k: the number of active experts
varies per token and sample) and the DTSI dual router (dense training / sparse inference).

[I] choices (spec §2.3 recommendations followed):
* per-token routers ``h_t: R^D -> R^E`` (both ``h_train`` and ``h_infer``);
* each expert is a full-width GELU FFN (hidden ``ffn_ratio·D``): capacity ×E at the same active compute
  when the active ratio is 1/E (set ``expert_hidden`` to slice the dense width instead);
* training forward uses ``v^train``; ``h_infer`` learns through an MSE distillation of ``v^infer`` to
  ``stopgrad(v^train)`` (weight ``distill_weight``) plus the L1 term, both on detached inputs and expert
  outputs so they train ``h_infer`` only; eval uses ``h_infer`` (``eval_router = "train"`` scores with
  ``h_train``, to measure the gap). Training is dense by design, inference sparse (``moe_impl``);
* ``L_reg = Σ_t Σ_j G^infer_{t,j}`` averaged over the batch and summed over layers (Eq. 11);
* adaptive λ: an integral controller on the achieved active ratio, after every training forward
  ``λ ← clip(λ + η·(active_ratio − target), 0, 1)`` (η = ``lambda_lr``). The spec's ReMoE-style
  multiplicative rule ``λ·(1+η)^{sign}`` was tried first: under Adam even λ≈1e-5 kills most ReLU gates in a
  few steps and a multiplicative λ cannot reach 0 quickly enough to let them recover, so the ratio stayed
  far below the target; the additive rule settles around the target on the tiny runs of the tests. The
  target acts as a budget: below it λ is 0 and routing is left to the task. Known limitation: with
  ``embedding_norm=True`` the post-LN blocks let the model shrink gates and grow experts at no cost, so the
  L1 term bites slowly (ratio ≈ 0.45 after 150 tiny steps at target 0.25); the routing test runs with
  ``embedding_norm=False``;
  λ, the step and the last active ratios are registered buffers (saved in checkpoints).

Auxiliary loss = λ·L_reg + distill_weight·Σ_layers MSE. :meth:`routing_stats` reports the achieved active
ratio (fraction of ``G^infer > 0``), overall, per layer and per expert.
FLOPs per example = the eval forward as computed: sparse, the router plus the active experts at the per-layer
ratio of the last eval forward (data dependent); masked, all E experts (``active_flops_per_example`` then
counts the active ones).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import FeatureLayout, check, inherits_keywords
from .mixing import token_mix
from .moe import DTSIPerTokenMoE
from .rankmixer import RankMixer


class RankMixerMoEBlock(nn.Module):
    """Post-LN RankMixer block with a DTSI ReLU-routed per-token MoE. [B, T, D] -> [B, T, D]."""

    def __init__(self, num_tokens: int, d_model: int, hidden: int, num_experts: int, dropout: float = 0.0,
                 impl: str = "sparse"):
        super().__init__()
        self.T = num_tokens
        self.norm_mix = nn.LayerNorm(d_model)
        self.moe = DTSIPerTokenMoE(num_tokens, d_model, hidden, num_experts, dropout, impl)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.last_gates: Tensor | None = None
        self.last_distill: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        s = self.norm_mix(token_mix(x, self.T) + x)
        v, gates, distill = self.moe(s)
        self.last_gates, self.last_distill = gates, distill
        return self.norm_ffn(v + s)

    def flops(self) -> int:
        return self.moe.flops()


class RankMixerMoE(RankMixer):
    """Args (besides :class:`RankMixer`'s): num_experts, expert_hidden (None = ffn_ratio·D),
    target_active_ratio, l1_lambda_init, lambda_lr (η), distill_weight, moe_impl ("sparse" inference |
    "masked" dense reference)."""

    name = "rankmixer_moe"

    @inherits_keywords(RankMixer)
    def __init__(
        self,
        layout: FeatureLayout,
        *,
        num_experts: int = 4,
        expert_hidden: int | None = None,
        target_active_ratio: float = 0.5,
        l1_lambda_init: float = 0.0,
        lambda_lr: float = 3e-3,
        distill_weight: float = 1.0,
        moe_impl: str = "sparse",
        **kwargs: Any,
    ) -> None:
        check(num_experts >= 1, f"num_experts must be >= 1, got {num_experts}")
        check(
            0.0 < target_active_ratio <= 1.0,
            f"target_active_ratio must be in (0, 1], got {target_active_ratio}",
        )
        check(expert_hidden is None or expert_hidden >= 1, f"expert_hidden must be None or >= 1, got {expert_hidden}")
        check(l1_lambda_init >= 0, f"l1_lambda_init must be >= 0, got {l1_lambda_init}")
        check(lambda_lr >= 0, f"lambda_lr must be >= 0, got {lambda_lr}")
        self._num_experts = num_experts
        self._expert_hidden = expert_hidden
        self._moe_impl = moe_impl
        super().__init__(layout, **kwargs)
        self._store_config(locals())
        self.target_active_ratio = float(target_active_ratio)
        self.lambda_lr = float(lambda_lr)
        self.distill_weight = float(distill_weight)
        self.register_buffer("l1_lambda", torch.tensor(float(l1_lambda_init)))
        self.register_buffer("moe_step", torch.tensor(0, dtype=torch.long))
        self.register_buffer("active_ratio", torch.tensor(1.0))
        self.register_buffer("layer_active_ratio", torch.ones(len(self.blocks)))

    def _make_block(self) -> nn.Module:
        hidden = self._expert_hidden or self.ffn_hidden
        return RankMixerMoEBlock(self.T, self.D, hidden, self._num_experts, self._block_dropout(), self._moe_impl)

    @property
    def eval_router(self) -> str:
        """Router used by eval forwards: ``"infer"`` (the deployed one, default) or ``"train"``."""
        return self.blocks[0].moe.eval_router

    @eval_router.setter
    def eval_router(self, which: str) -> None:
        check(which in ("infer", "train"), f"eval_router must be one of ['infer', 'train'], got {which!r}")
        for blk in self.blocks:
            blk.moe.eval_router = which

    def _forward(self, categorical: Tensor, dense: Tensor) -> Tensor:
        logits = super()._forward(categorical, dense)
        gates = [blk.last_gates for blk in self.blocks]
        with torch.no_grad():
            loads = torch.stack([(g > 0).float().mean((0, 1)) for g in gates])  # [L, E] per-expert load
            ratios = loads.mean(1)
        if self.training:
            b = max(categorical.shape[0], 1)
            l_reg = sum(g.sum() for g in gates) / b
            distill = sum(blk.last_distill for blk in self.blocks)
            self._aux_loss = self.l1_lambda.clone() * l_reg + self.distill_weight * distill
            with torch.no_grad():
                ratio = ratios.mean()
                self.l1_lambda.add_(self.lambda_lr * (ratio - self.target_active_ratio)).clamp_(0.0, 1.0)
                self.moe_step.add_(1)
                self.active_ratio.copy_(ratio)
                self.layer_active_ratio.copy_(ratios)
                self._load = loads.mean(0)
        else:
            self._eval_ratios, self._eval_load = ratios, loads.mean(0)
        for blk in self.blocks:  # do not keep graphs alive between steps
            blk.last_gates = blk.last_distill = None
        return logits

    def routing_stats(self) -> dict[str, float | list[float]]:
        """Achieved active-expert ratio of the inference router (last training forward), λ, target."""
        out: dict[str, float | list[float]] = {
            "active_ratio": float(self.active_ratio),
            "layer_active_ratio": [float(r) for r in self.layer_active_ratio],
            "target_active_ratio": self.target_active_ratio,
            "l1_lambda": float(self.l1_lambda),
            "step": int(self.moe_step),
        }
        if getattr(self, "_load", None) is not None:
            out["expert_load"] = self._load.tolist()
        if getattr(self, "_eval_ratios", None) is not None:
            out["eval_active_ratio"] = float(self._eval_ratios.mean())
            out["eval_expert_load"] = self._eval_load.tolist()
        return out

    def _layer_ratios(self) -> list[float]:
        """Active ratio per layer of the last eval forward (else of the last training forward)."""
        ratios = getattr(self, "_eval_ratios", None)
        return (ratios if ratios is not None else self.layer_active_ratio).tolist()

    def _flops(self) -> int:
        """Eval forward as computed: all experts when masked; the active ones (ratio of the last eval forward,
        data dependent) when sparse."""
        sparse = self._moe_impl == "sparse"
        moe = sum(b.moe.flops(r if sparse else None) for b, r in zip(self.blocks, self._layer_ratios(), strict=True))
        return self.tokenizer.flops() + moe + self.tower.flops()

    def active_flops_per_example(self) -> int:
        moe = sum(b.moe.flops(r) for b, r in zip(self.blocks, self._layer_ratios(), strict=True))
        return self.tokenizer.flops() + moe + self.tower.flops()
