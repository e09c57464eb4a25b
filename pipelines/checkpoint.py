"""The model checkpoint directory: weights, how to rebuild the model, and the preprocessing artifact.

One layout for Ray Train checkpoints, the MLflow model's artifacts and the ranker's loader:
``model.pt`` (state dict), ``model.json`` (name, constructor kwargs, feature layout), ``preprocessing.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from mixrec.models import FeatureLayout, RankingModel, build_model

from .preprocess import Preprocessor

WEIGHTS = "model.pt"
MODEL_SPEC = "model.json"


def save_checkpoint(directory: Path, model: RankingModel, preprocessor: Preprocessor, extra: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {**model.config(), "layout": asdict(preprocessor.layout()), **(extra or {})}
    torch.save(model.state_dict(), directory / WEIGHTS)
    (directory / MODEL_SPEC).write_text(json.dumps(spec))
    preprocessor.save(directory)
    return directory


def read_spec(directory: Path) -> dict:
    return json.loads((Path(directory) / MODEL_SPEC).read_text())


def load_checkpoint(directory: Path) -> tuple[RankingModel, Preprocessor, dict]:
    """Rebuild the model in eval mode from a checkpoint directory; returns (model, preprocessor, spec)."""
    directory = Path(directory)
    spec = read_spec(directory)
    layout = spec["layout"]
    # bag_sizes: absent from checkpoints written before multi-hot fields (all fields single-valued)
    model = build_model(spec["name"], FeatureLayout(cardinalities=tuple(layout["cardinalities"]), n_dense=layout["n_dense"],
                                                    bag_sizes=tuple(layout.get("bag_sizes", ()))), **spec["kwargs"])
    model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    return model, Preprocessor.load(directory), spec
