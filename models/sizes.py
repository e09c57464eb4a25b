"""Named sizes (torchtune-style builders), kept apart from the architecture code.

Each builder takes a :class:`FeatureLayout` (+ optional keyword overrides) and returns a model whose
``config()`` names the underlying architecture, so checkpoints rebuild without the size name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .base import FeatureLayout, RankingModel

_SIZE_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    # RankMixer
    "rankmixer_small": ("rankmixer", dict(embedding_dim=8, num_tokens=4, d_model=32, num_layers=2, ffn_ratio=2)),
    "rankmixer_base": ("rankmixer", dict(embedding_dim=16, num_tokens=8, d_model=128, num_layers=2, ffn_ratio=4)),
    "rankmixer_large": ("rankmixer", dict(embedding_dim=32, num_tokens=16, d_model=768, num_layers=2, ffn_ratio=4)),
}


def _build(arch: str, defaults: dict[str, Any], layout: FeatureLayout, **overrides: Any) -> RankingModel:
    from .registry import build_model

    return build_model(arch, layout, **{**defaults, **overrides})


def register_size(name: str, arch: str, **defaults: Any) -> None:
    _SIZE_TABLE[name] = (arch, defaults)
    SIZES[name] = partial(_build, arch, defaults)


SIZES: dict[str, Callable[..., RankingModel]] = {n: partial(_build, a, d) for n, (a, d) in _SIZE_TABLE.items()}


def size_kwargs(name: str) -> tuple[str, dict[str, Any]]:
    """(architecture, default kwargs) of a named size."""
    arch, kw = _SIZE_TABLE[name]
    return arch, dict(kw)


def rankmixer_small(layout: FeatureLayout, **kw: Any) -> RankingModel:
    return SIZES["rankmixer_small"](layout, **kw)


def rankmixer_base(layout: FeatureLayout, **kw: Any) -> RankingModel:
    return SIZES["rankmixer_base"](layout, **kw)


def rankmixer_large(layout: FeatureLayout, **kw: Any) -> RankingModel:
    return SIZES["rankmixer_large"](layout, **kw)
