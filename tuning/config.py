"""The study file (YAML): architectures x a size grid x data fractions, on the data a ``pipeline:`` block
describes; parsed and checked (every point must build) before any trial starts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mixrec.pipelines.config import ConfigError, PipelineConfig, expand_env


class ArchitectureGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="constructor kwarg -> values (the sizes)")
    fixed: dict[str, Any] = Field(default_factory=dict, description="constructor kwargs shared by every size")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    architectures: dict[str, ArchitectureGrid] = Field(..., min_length=1)
    learning_rates: list[float] = Field(default_factory=list, description="searched with ASHA within each size")
    data_fractions: list[float] = Field(default_factory=lambda: [1.0])
    epochs: int = Field(2, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    flops_budget: float | None = Field(None, gt=0, description="forward FLOPs per example allowed for the ROI pick")

    @field_validator("data_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("must be a non-empty list of fractions in (0, 1]")
        return v


def load_study(path: str | Path) -> StudyConfig:
    """Parse and check a study before any trial starts: every bad field is named."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        data = yaml.safe_load(expand_env(path.read_text(), str(path))) or {}
        study = StudyConfig.model_validate(data)
    except yaml.YAMLError as err:
        raise ConfigError(f"study file {path} is not valid YAML: {err}") from None
    except ValidationError as err:
        lines = [f"invalid study {path}:"] + [f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None
    check_points(study)
    return study


def points(study: StudyConfig) -> list[dict]:
    """Every (architecture, size, data fraction) point of the grid, with a stable id."""
    out = []
    for arch, spec in study.architectures.items():
        keys = sorted(spec.grid)
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            kwargs = {**spec.fixed, **dict(zip(keys, values, strict=True))}
            for fraction in study.data_fractions:
                size = "-".join(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in zip(keys, values, strict=True))
                out.append({"id": f"{arch}[{size}]@{fraction:g}", "arch": arch, "kwargs": kwargs, "fraction": fraction})
    return out


def check_points(study: StudyConfig) -> None:
    """Raise :class:`ConfigError` naming the field unless every point builds (on a small synthetic layout)."""
    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.models import FeatureLayout, available_models, build_model  # torch: only once a study is read

    known = available_models()
    for arch, spec in study.architectures.items():
        if arch not in known:
            raise ConfigError(f"architectures.{arch}: unknown architecture; allowed: {', '.join(known)}")
        if not spec.grid:
            raise ConfigError(f"architectures.{arch}.grid: empty; give at least one size parameter with values")
        for key, values in spec.grid.items():
            if not values:
                raise ConfigError(f"architectures.{arch}.grid.{key}: empty list of values")
    layout = FeatureLayout(cardinalities=(2,) * len(schema.categorical), n_dense=len(schema.dense))
    for p in points(study):
        try:
            build_model(p["arch"], layout, **p["kwargs"])
        except (ValueError, TypeError) as err:
            raise ConfigError(f"architectures.{p['arch']}: size {p['kwargs']} is not accepted: {err}") from None
