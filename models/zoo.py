"""The zoo's registry: build any architecture, or named size, by name from a :class:`FeatureLayout`.

Architectures register their class (models/__init__.py registers them all) and sizes.py registers the named
sizes (an architecture with default keywords). This module imports no model and not sizes.py: they import
it, one way.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from .base import FeatureLayout, RankingModel

_ARCHITECTURES: dict[str, type[RankingModel]] = {}
_SIZES: dict[str, tuple[str, dict[str, Any]]] = {}  # size name -> (architecture, default keywords)


def register_model(cls: type[RankingModel]) -> type[RankingModel]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    _ARCHITECTURES[cls.name] = cls
    return cls


def register_size(name: str, arch: str, **defaults: Any) -> None:
    """Name ``arch`` with ``defaults`` (overridable at build time); its models' ``config()`` names ``arch``,
    so checkpoints rebuild without the size name."""
    _SIZES[name] = (arch, defaults)


def available_models() -> list[str]:
    """Names accepted by :func:`build_model` as architectures (sizes: :func:`available_sizes`)."""
    return sorted(_ARCHITECTURES)


def available_sizes() -> list[str]:
    return sorted(_SIZES)


def model_class(name: str) -> type[RankingModel]:
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; allowed names: {', '.join(available_models())}")
    return _ARCHITECTURES[name]


def size_kwargs(name: str) -> tuple[str, dict[str, Any]]:
    """(architecture, default kwargs) of a named size."""
    arch, defaults = _SIZES[name]
    return arch, dict(defaults)


def build_model(name: str, layout: FeatureLayout, **kwargs: Any) -> RankingModel:
    """Build model ``name`` (an architecture, or a named size such as ``unimixer_small``).

    ``kwargs`` are the architecture's constructor keyword arguments (for a size: overrides).
    Unknown names or keywords raise ``ValueError`` naming the allowed values.
    """
    if name in _SIZES:
        arch, defaults = _SIZES[name]
        return build_model(arch, layout, **{**defaults, **kwargs})
    if name not in _ARCHITECTURES:
        allowed = ", ".join(available_models())
        raise ValueError(
            f"unknown model {name!r}; allowed names: {allowed} (or a named size: {', '.join(available_sizes())})"
        )
    cls = _ARCHITECTURES[name]
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
