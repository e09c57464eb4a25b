"""Named sizes (torchtune-style builders), kept apart from the architecture code.

Each size is registered with the zoo (``build_model("unimixer_small", layout)``) and has a builder here that
takes a :class:`FeatureLayout` (+ optional keyword overrides) and returns a model whose ``config()`` names the
underlying architecture, so checkpoints rebuild without the size name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import FeatureLayout, RankingModel
from .zoo import build_model, register_size, size_kwargs

_SIZE_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    # RankMixer
    "rankmixer_small": ("rankmixer", dict(embedding_dim=8, num_tokens=4, d_model=32, num_layers=2, ffn_ratio=2)),
    "rankmixer_base": ("rankmixer", dict(embedding_dim=16, num_tokens=8, d_model=128, num_layers=2, ffn_ratio=4)),
    "rankmixer_large": ("rankmixer", dict(embedding_dim=32, num_tokens=16, d_model=768, num_layers=2, ffn_ratio=4)),
    # RankMixer Sparse-MoE (ReLU routing + DTSI)
    "rankmixer_moe_small": ("rankmixer_moe", dict(embedding_dim=8, num_tokens=4, d_model=32, num_layers=2, num_experts=4)),
    "rankmixer_moe_base": ("rankmixer_moe", dict(embedding_dim=16, num_tokens=8, d_model=128, num_layers=2, ffn_ratio=4, num_experts=8, target_active_ratio=0.25)),
    # 4 experts of hidden D: rankmixer_large's FFN parameters split into experts, half of them active
    "rankmixer_moe_large": ("rankmixer_moe", dict(embedding_dim=32, num_tokens=16, d_model=768, num_layers=2, ffn_ratio=1, num_experts=4)),
    # TokenMixer-Large (dense and SP-MoE)
    "tokenmixer_large_small": ("tokenmixer_large", dict(embedding_dim=8, num_tokens=4, d_model=32, num_heads=4, num_layers=2, ffn_ratio=2)),
    "tokenmixer_large_base": ("tokenmixer_large", dict(embedding_dim=16, num_tokens=8, d_model=128, num_heads=8, num_layers=4, ffn_ratio=2)),
    # ~100M parameters, the scale of the UniMixer paper's comparison (Table 2: TokenMixer-Large 103.3M)
    "tokenmixer_large_large": ("tokenmixer_large", dict(embedding_dim=32, num_tokens=16, d_model=512, num_heads=16, num_layers=4, ffn_ratio=1)),
    "tokenmixer_large_moe_base": ("tokenmixer_large_moe", dict(embedding_dim=16, num_tokens=8, d_model=128, num_heads=8, num_layers=4, ffn_ratio=4, num_experts=4, top_k=2, moe_alpha=2.0)),
    # UniMixer (full UniMixing) and UniMixing-Lite
    "unimixer_small": ("unimixer", dict(embedding_dim=8, num_tokens=4, d_model=32, num_layers=2, block_size=4)),
    "unimixer_base": ("unimixer", dict(embedding_dim=16, num_tokens=8, d_model=64, num_layers=4, block_size=8)),
    # _large: the paper's ~100M-parameter 2-block comparison (Table 2); _production: the authors' production-style
    # model (spec §4.8: T=16, D=96, 4 blocks), small and mixing-bound.
    "unimixer_large": ("unimixer", dict(embedding_dim=32, num_tokens=16, d_model=768, num_layers=2, block_size=64, ffn_ratio=1.5)),
    "unimixer_production": ("unimixer", dict(embedding_dim=32, num_tokens=16, d_model=96, num_layers=4, block_size=16)),
    # UniMixer with per-token SP-MoE SwiGLUs (E=4, 1 shared + top-1 routed): unimixer_base/_large with 2x the FFN
    # width as experts, half of it active
    "unimixer_moe_base": ("unimixer_moe", dict(embedding_dim=16, num_tokens=8, d_model=64, num_layers=4, block_size=8, ffn_ratio=4)),
    "unimixer_moe_large": ("unimixer_moe", dict(embedding_dim=32, num_tokens=16, d_model=768, num_layers=2, block_size=64, ffn_ratio=3)),
    "unimixer_lite_small": ("unimixer_lite", dict(embedding_dim=8, num_tokens=4, d_model=32, num_layers=2, block_size=4, num_basis=4)),
    "unimixer_lite_base": ("unimixer_lite", dict(embedding_dim=16, num_tokens=8, d_model=64, num_layers=4, block_size=4, num_basis=4)),
    "unimixer_lite_large": ("unimixer_lite", dict(embedding_dim=32, num_tokens=16, d_model=768, num_layers=2, block_size=16, num_basis=4, rank=96, ffn_ratio=1.5)),
    "unimixer_lite_production": ("unimixer_lite", dict(embedding_dim=32, num_tokens=16, d_model=96, num_layers=4, block_size=4, num_basis=4, rank=48)),
    # Wukong
    "wukong_small": ("wukong", dict(embedding_dim=8, num_layers=2, num_fm_embeddings=4, num_lcb_embeddings=4, fm_rank=8)),
    "wukong_base": ("wukong", dict(embedding_dim=16, num_layers=3, num_fm_embeddings=8, num_lcb_embeddings=8, fm_rank=24, fmb_mlp_dims=(256, 256), top_mlp_dims=(256,))),
    "wukong_large": ("wukong", dict(embedding_dim=128, num_layers=4, num_fm_embeddings=16, num_lcb_embeddings=16, fm_rank=24, fmb_mlp_dims=(2048, 2048), top_mlp_dims=(2048, 2048))),
    # baselines (BARS Frappe_x1-like)
    "dnn_bars": ("dnn", dict(embedding_dim=10, hidden_dims=(400, 400, 400), batch_norm=True, dropout=0.2)),
    "dcnv2_bars": ("dcnv2", dict(embedding_dim=10, num_cross_layers=4, dnn_dims=(400, 400, 400), batch_norm=True, dropout=0.2)),
}


for _name, (_arch, _defaults) in _SIZE_TABLE.items():
    register_size(_name, _arch, **_defaults)


def _named(size: str) -> Callable[..., RankingModel]:
    """A torchtune-style builder for a named size: ``unimixer_small(layout, **overrides)``."""

    def builder(layout: FeatureLayout, **kw: Any) -> RankingModel:
        return build_model(size, layout, **kw)

    arch, defaults = size_kwargs(size)
    builder.__name__ = builder.__qualname__ = size
    builder.__doc__ = f"Named size {size!r}: {arch} with {defaults}."
    return builder


rankmixer_small = _named("rankmixer_small")
rankmixer_base = _named("rankmixer_base")
rankmixer_large = _named("rankmixer_large")
rankmixer_moe_small = _named("rankmixer_moe_small")
rankmixer_moe_base = _named("rankmixer_moe_base")
rankmixer_moe_large = _named("rankmixer_moe_large")
tokenmixer_large_small = _named("tokenmixer_large_small")
tokenmixer_large_base = _named("tokenmixer_large_base")
tokenmixer_large_large = _named("tokenmixer_large_large")
tokenmixer_large_moe_base = _named("tokenmixer_large_moe_base")
unimixer_small = _named("unimixer_small")
unimixer_base = _named("unimixer_base")
unimixer_large = _named("unimixer_large")
unimixer_production = _named("unimixer_production")
unimixer_moe_base = _named("unimixer_moe_base")
unimixer_moe_large = _named("unimixer_moe_large")
unimixer_lite_small = _named("unimixer_lite_small")
unimixer_lite_base = _named("unimixer_lite_base")
unimixer_lite_large = _named("unimixer_lite_large")
unimixer_lite_production = _named("unimixer_lite_production")
wukong_small = _named("wukong_small")
wukong_base = _named("wukong_base")
wukong_large = _named("wukong_large")
