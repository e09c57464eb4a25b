"""Per-token mixture-of-experts layers (spec §2.3, §3.5, §7.4).

* :class:`DTSIPerTokenMoE` — RankMixer Sparse-MoE: ReLU routing, dense-training / sparse-inference dual
  router (arXiv 2507.15551 §3.4, Eq. 10–11).
* :class:`SPMoESwiGLU` — TokenMixer-Large Sparse-Pertoken MoE: per-token pool of fine-grained SwiGLU experts,
  one always-on shared expert, softmax top-(k−1) routed experts, gate scaling α (arXiv 2602.06563 §3.4,
  Eq. 19–21).

Both compute every expert densely and mask/weight the outputs (spec §7.4: correct and simple on CPU;
sparse dispatch only pays on GPU), so the FLOP counts are those of the dense computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check
from .layers import PerTokenSwiGLU, _uniform_


class DTSIPerTokenMoE(nn.Module):
    """Token t owns ``num_experts`` GELU FFN experts ``e_{t,j}: D -> h -> D`` and two ReLU routers.

    ``G^x_{t,j} = ReLU(h^x_t(s_t))_j`` for x ∈ {train, infer} (per-token routers, [I]).
    Training ([I] spec §2.3): expert outputs computed once; ``v^train = Σ_j G^train e_j`` goes forward;
    ``v^infer = Σ_j G^infer e_j`` is distilled to ``stopgrad(v^train)`` (MSE) so ``h_infer`` gets a task
    signal; the L1 regulariser is on ``G^infer`` only. Eval: only ``G^infer`` is used.

    Shapes: [B, T, D] -> ([B, T, D], G^infer [B, T, E], distill loss scalar or None).
    """

    def __init__(self, num_tokens: int, d_model: int, hidden: int, num_experts: int, dropout: float = 0.0):
        super().__init__()
        self.T, self.D, self.h, self.E = num_tokens, d_model, hidden, num_experts
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        out = self.experts(x)
        g_inf = self.gates(x, "infer")
        v_inf = torch.einsum("bte,bted->btd", g_inf, out)
        if not self.training:
            return self.drop(v_inf), g_inf, None
        g_tr = self.gates(x, "train")
        v_tr = torch.einsum("bte,bted->btd", g_tr, out)
        distill = F.mse_loss(v_inf, v_tr.detach())
        return self.drop(v_tr), g_inf, distill

    def flops(self) -> int:
        """Inference forward: all experts (dense compute), infer router, one mixture."""
        t, d, h, e = self.T, self.D, self.h, self.E
        return 4 * t * e * d * h + 2 * t * d * e + 2 * t * e * d


class SPMoESwiGLU(nn.Module):
    """Sparse-Pertoken MoE over a per-token SwiGLU (TokenMixer-Large Eq. 21).

    The dense per-token SwiGLU's hidden width is sliced into ``num_experts`` experts of width h/E
    ("first enlarge, then sparsify"). Expert 0 of every token is the shared expert (always on); a per-token
    softmax router over the E−1 routed experts picks the top-(k−1), whose hidden activations are scaled
    by ``alpha · g`` ([I] softmax over all routed experts, not re-normalised over the selected ones):
    ``y_t = α Σ_{i∈Top(k−1)} g_{t,i} Expert_{t,i}(x_t) + Shared_t(x_t)``.

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
    ) -> None:
        super().__init__()
        check(num_experts >= 2, f"num_experts must be >= 2 for SP-MoE, got {num_experts}")
        check(1 <= top_k <= num_experts, f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        check(
            hidden % num_experts == 0,
            f"SwiGLU hidden width ({hidden}) must be divisible by num_experts ({num_experts})",
        )
        self.T, self.D, self.E, self.k, self.alpha = num_tokens, d_model, num_experts, top_k, float(alpha)
        self.ffn = PerTokenSwiGLU(num_tokens, d_model, hidden, bias=bias, down_init_scale=down_init_scale, dropout=dropout)
        self.router = nn.Parameter(_uniform_(torch.empty(num_tokens, d_model, num_experts - 1), d_model))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, t, _ = x.shape
        probs = torch.softmax(torch.einsum("btd,tde->bte", x, self.router), dim=-1)  # [B,T,E-1]
        routed = torch.zeros_like(probs)
        if self.k > 1:
            top_v, top_i = probs.topk(self.k - 1, dim=-1)
            routed = routed.scatter(-1, top_i, self.alpha * top_v)
        scale = torch.cat([probs.new_ones(b, t, 1), routed], dim=-1)  # shared expert first
        h_scale = scale.repeat_interleave(self.ffn.h // self.E, dim=-1)  # [B,T,h]
        return self.ffn(x, h_scale), (scale > 0)

    def flops(self) -> int:
        return self.ffn.flops() + 2 * self.T * self.D * (self.E - 1)
