"""Per-token mixture-of-experts layers (spec §2.3, §3.5, §7.4).

* :class:`DTSIPerTokenMoE` — RankMixer Sparse-MoE: ReLU routing, dense-training / sparse-inference dual
  router (arXiv 2507.15551 §3.4, Eq. 10–11).
* :class:`SPMoESwiGLU` — TokenMixer-Large Sparse-Pertoken MoE: per-token pool of fine-grained SwiGLU experts,
  one always-on shared expert, softmax top-(k−1) routed experts, gate scaling α (arXiv 2602.06563 §3.4,
  Eq. 19–21).

Both take ``impl``: ``"sparse"`` (default) runs every expert only on the rows routed to it (grouped matmul,
:mod:`.dispatch`); ``"masked"`` is the reference that computes every expert densely and masks/weights the
outputs. SP-MoE is sparse in training and inference; DTSI trains densely by design (both routers weight every
expert) and is sparse at inference. Under ``torch.compile``, and on accelerators unless the input is bf16, both
use the masked path (:func:`.dispatch.sparse_ok`). ``flops()`` counts what runs, ``active_flops()`` the active experts only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check
from .dispatch import expert_ffn, sparse_ok, swiglu
from .layers import PerTokenSwiGLU, _uniform_

IMPLS = ("masked", "sparse")


class DTSIPerTokenMoE(nn.Module):
    """Token t owns ``num_experts`` GELU FFN experts ``e_{t,j}: D -> h -> D`` and two ReLU routers.

    ``G^x_{t,j} = ReLU(h^x_t(s_t))_j`` for x ∈ {train, infer} (per-token routers, [I]).
    Training ([I] spec §2.3): expert outputs computed once; ``v^train = Σ_j G^train e_j`` goes forward;
    ``v^infer`` is distilled to ``stopgrad(v^train)`` (MSE) on detached inputs and expert outputs, so the
    distillation (and the L1 term on ``G^infer``) trains the inference router only. Eval uses the router named
    by ``eval_router`` (``"infer"``; ``"train"`` to measure the train router's quality).

    Shapes: [B, T, D] -> ([B, T, D], gates used [B, T, E], distill loss scalar or None).
    """

    def __init__(self, num_tokens: int, d_model: int, hidden: int, num_experts: int, dropout: float = 0.0,
                 impl: str = "sparse"):
        super().__init__()
        check(impl in IMPLS, f"moe_impl must be one of {list(IMPLS)}, got {impl!r}")
        self.T, self.D, self.h, self.E, self.impl = num_tokens, d_model, hidden, num_experts, impl
        self.eval_router = "infer"
        self.w1 = nn.Parameter(_uniform_(torch.empty(num_tokens, num_experts, d_model, hidden), d_model))
        self.b1 = nn.Parameter(_uniform_(torch.empty(num_tokens, num_experts, hidden), d_model))
        self.w2 = nn.Parameter(_uniform_(torch.empty(num_tokens, num_experts, hidden, d_model), hidden))
        self.b2 = nn.Parameter(_uniform_(torch.empty(num_tokens, num_experts, d_model), hidden))
        self.router_train = nn.Parameter(_uniform_(torch.empty(num_tokens, d_model, num_experts), d_model))
        self.router_train_bias = nn.Parameter(torch.zeros(num_tokens, num_experts))
        self.router_infer = nn.Parameter(_uniform_(torch.empty(num_tokens, d_model, num_experts), d_model))
        self.router_infer_bias = nn.Parameter(torch.zeros(num_tokens, num_experts))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def experts(self, x: Tensor) -> Tensor:
        """All experts of every token: [B, T, D] -> [B, T, E, D]."""
        hid = F.gelu(torch.einsum("btd,tedh->bteh", x, self.w1) + self.b1)
        return torch.einsum("bteh,tehd->bted", hid, self.w2) + self.b2

    def gates(self, x: Tensor, which: str) -> Tensor:
        w, b = (self.router_infer, self.router_infer_bias) if which == "infer" else (
            self.router_train,
            self.router_train_bias,
        )
        return F.relu(torch.einsum("btd,tde->bte", x, w) + b)

    def sparse_mixture(self, x: Tensor, gates: Tensor) -> Tensor:
        """``Σ_j G_{t,j} e_{t,j}(x_t)`` running only experts with ``G > 0``: [B, T, D], [B, T, E] -> [B, T, D]."""
        b, t, e = gates.shape
        idx = torch.arange(b * t * e, device=x.device)
        expert = idx % (t * e)  # expert id t·E + j of assignment (b, t, j)
        expert = torch.where(gates.reshape(-1) > 0, expert, t * e)
        y = expert_ffn(x.reshape(b * t, self.D), idx // e, expert, gates.reshape(-1),
                       self.w1.reshape(t * e, self.D, self.h), self.w2.reshape(t * e, self.h, self.D), F.gelu,
                       self.b1.reshape(t * e, self.h), self.b2.reshape(t * e, self.D))
        return y.reshape(b, t, self.D)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if not self.training:
            g = self.gates(x, self.eval_router)
            if self.impl == "sparse" and sparse_ok(x):
                return self.drop(self.sparse_mixture(x, g)), g, None
            return self.drop(torch.einsum("bte,bted->btd", g, self.experts(x))), g, None
        out = self.experts(x)
        g_tr = self.gates(x, "train")
        v_tr = torch.einsum("bte,bted->btd", g_tr, out)
        # the inference router learns from detached inputs and expert outputs: no gradient into experts/trunk
        g_inf = self.gates(x, "infer")
        v_inf = torch.einsum("bte,bted->btd", self.gates(x.detach(), "infer"), out.detach())
        distill = F.mse_loss(v_inf, v_tr.detach())
        return self.drop(v_tr), g_inf, distill

    def flops(self, active_ratio: float | None = None) -> int:
        """Inference forward. Masked: every expert, the router and the mixture. Sparse (or ``active_ratio``
        given): the router and ``active_ratio`` of the expert work."""
        t, d, h, e = self.T, self.D, self.h, self.E
        router, experts = 2 * t * d * e, 4 * t * e * d * h
        if active_ratio is None:
            return router + experts + 2 * t * e * d
        return router + round(active_ratio * experts)


class SPMoESwiGLU(nn.Module):
    """Sparse-Pertoken MoE over a per-token SwiGLU (TokenMixer-Large Eq. 21).

    The dense per-token SwiGLU's hidden width is sliced into ``num_experts`` experts of width h/E
    ("first enlarge, then sparsify"). Expert 0 of every token is the shared expert (always on); a per-token
    softmax router over the E−1 routed experts picks the top-(k−1), whose hidden activations are scaled
    by ``alpha · g`` ([I] softmax over all routed experts, not re-normalised over the selected ones):
    ``y_t = α Σ_{i∈Top(k−1)} g_{t,i} Expert_{t,i}(x_t) + Shared_t(x_t)``. The down-projection bias (if any) is
    added once, as in the dense SwiGLU.

    Shapes: [B, T, D] -> ([B, T, D], active-expert mask [B, T, E]).
    """

    def __init__(
        self,
        num_tokens: int,
        d_model: int,
        hidden: int,
        num_experts: int,
        top_k: int,
        alpha: float,
        bias: bool = False,
        down_init_scale: float = 0.01,
        dropout: float = 0.0,
        impl: str = "sparse",
    ) -> None:
        super().__init__()
        check(num_experts >= 2, f"num_experts must be >= 2 for SP-MoE, got {num_experts}")
        check(1 <= top_k <= num_experts, f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        check(
            hidden % num_experts == 0,
            f"SwiGLU hidden width ({hidden}) must be divisible by num_experts ({num_experts})",
        )
        check(impl in IMPLS, f"moe_impl must be one of {list(IMPLS)}, got {impl!r}")
        self.T, self.D, self.E, self.k, self.alpha, self.impl = num_tokens, d_model, num_experts, top_k, float(alpha), impl
        self.ffn = PerTokenSwiGLU(num_tokens, d_model, hidden, bias=bias, down_init_scale=down_init_scale, dropout=dropout)
        self.router = nn.Parameter(_uniform_(torch.empty(num_tokens, d_model, num_experts - 1), d_model))

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, D] -> routed (expert index 1..E−1, gate α·p) [B, T, k−1] each, active mask [B, T, E]."""
        probs = torch.softmax(torch.einsum("btd,tde->bte", x, self.router), dim=-1)  # [B,T,E-1]
        top_v, top_i = probs.topk(self.k - 1, dim=-1)
        mask = torch.zeros(*x.shape[:2], self.E, dtype=torch.bool, device=x.device)
        mask[..., 0] = True
        return top_i + 1, self.alpha * top_v, mask.scatter(-1, top_i + 1, True)

    def _expert_weights(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per-(token, expert) slices: w_in [T, E, D, 2h/E] ([up | gate]), w_out [T, E, h/E, D], b_in [T, E, 2h/E]."""
        t, e, d = self.T, self.E, self.D
        c = self.ffn.h // e
        up, gate = self.ffn.up_gate.weight.chunk(2, dim=-1)  # [T, D, h] each
        w_in = torch.cat([up.reshape(t, d, e, c), gate.reshape(t, d, e, c)], dim=-1).transpose(1, 2)
        w_out = self.ffn.down.weight.reshape(t, e, c, d)
        b_in = None
        if self.ffn.up_gate.bias is not None:
            bu, bg = self.ffn.up_gate.bias.chunk(2, dim=-1)
            b_in = torch.cat([bu.reshape(t, e, c), bg.reshape(t, e, c)], dim=-1)
        return w_in, w_out, b_in

    def _sparse(self, x: Tensor, experts: Tensor, gates: Tensor) -> Tensor:
        b, t, d = x.shape
        e, c = self.E, self.ffn.h // self.E
        w_in, w_out, b_in = self._expert_weights()
        shared_h = torch.einsum("btd,tdc->btc", x, w_in[:, 0])
        if b_in is not None:
            shared_h = shared_h + b_in[:, 0]
        y = torch.einsum("btc,tcd->btd", swiglu(shared_h), w_out[:, 0])
        if self.k > 1:
            kk = self.k - 1
            n = torch.arange(b * t * kk, device=x.device)
            tok = (n // kk) % t
            routed = expert_ffn(x.reshape(b * t, d), n // kk, tok * e + experts.reshape(-1), gates.reshape(-1),
                                w_in.reshape(t * e, d, 2 * c), w_out.reshape(t * e, c, d), swiglu,
                                None if b_in is None else b_in.reshape(t * e, 2 * c))
            y = y + routed.reshape(b, t, d)
        else:  # shared expert only: keep the router in the graph (DDP wants a gradient, even zero, for each parameter)
            y = y + 0.0 * gates.sum()
        if self.ffn.down.bias is not None:
            y = y + self.ffn.down.bias
        return self.ffn.drop(y)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        experts, gates, mask = self.route(x)
        if self.impl == "sparse" and sparse_ok(x):
            return self._sparse(x, experts, gates), mask
        scale = torch.zeros_like(mask, dtype=x.dtype).scatter(-1, experts, gates.to(x.dtype))
        scale[..., 0] = 1.0  # shared expert
        h_scale = scale.repeat_interleave(self.ffn.h // self.E, dim=-1)  # [B,T,h]
        return self.ffn(x, h_scale), mask

    def flops(self) -> int:
        """Forward as computed: every expert when masked, the k active ones when sparse (+ the router)."""
        return self.active_flops() if self.impl == "sparse" else self.ffn.flops() + self.router_flops()

    def active_flops(self) -> int:
        return self.ffn.flops() * self.k // self.E + self.router_flops()

    def router_flops(self) -> int:
        return 2 * self.T * self.D * (self.E - 1)
