"""Model registry: build any zoo model (or named size) by name from a :class:`FeatureLayout`."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from .base import FeatureLayout, RankingModel

_REGISTRY: dict[str, type[RankingModel]] = {}


def register_model(cls: type[RankingModel]) -> type[RankingModel]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    _REGISTRY[cls.name] = cls
    return cls


def available_models() -> list[str]:
    """Names accepted by :func:`build_model` as architectures (sizes: :func:`available_sizes`)."""
    return sorted(_REGISTRY)


def available_sizes() -> list[str]:
    from .sizes import SIZES

    return sorted(SIZES)


def model_class(name: str) -> type[RankingModel]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed names: {', '.join(available_models())}")
    return _REGISTRY[name]


def build_model(name: str, layout: FeatureLayout, **kwargs: Any) -> RankingModel:
    """Build model ``name`` (an architecture, or a named size such as ``unimixer_small``).

    ``kwargs`` are the architecture's constructor keyword arguments (for a size: overrides).
    Unknown names or keywords raise ``ValueError`` naming the allowed values.
    """
    from .sizes import SIZES

    if name in SIZES:
        return SIZES[name](layout, **kwargs)
    if name not in _REGISTRY:
        allowed = ", ".join(available_models())
        raise ValueError(
            f"unknown model {name!r}; allowed names: {allowed} (or a named size: {', '.join(sorted(SIZES))})"
        )
    cls = _REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    allowed_kw = [k for k in params if k not in ("self", "layout")]
    unknown = sorted(set(kwargs) - set(allowed_kw))
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown} for model {name!r}; allowed: {allowed_kw}")
    return cls(layout, **kwargs)


class ModelSummary(NamedTuple):
    name: str
    parameters: int
    mflops_per_example: float


DEFAULT_SUMMARY_LAYOUT = FeatureLayout(cardinalities=(1000,) * 10, n_dense=4)


def model_summary_table(layout: FeatureLayout | None = None) -> list[ModelSummary]:
    """One row per architecture at its default size: (name, parameters, MFLOPs/example)."""
    layout = layout or DEFAULT_SUMMARY_LAYOUT
    rows = []
    for name in available_models():
        m = build_model(name, layout)
        rows.append(ModelSummary(name, m.num_parameters(), m.flops_per_example() / 1e6))
    return rows
