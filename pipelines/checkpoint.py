"""The model checkpoint directory: weights, how to rebuild the model, and the preprocessing artifact.

One layout for Ray Train checkpoints, the MLflow model's artifacts and the ranker's loader:
``model.pt`` (state dict), ``model.json`` (name, constructor kwargs, feature layout), ``preprocessing.json``.
A training checkpoint adds what resuming needs: ``optimizer.pt`` (optimizers and schedulers) and
``progress.json`` (position, early-stopping state, the reported metrics).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from mixrec.features.io import atomic_path, write_json_atomic
from mixrec.models import FeatureLayout, RankingModel, build_model

from .preprocess import ARTIFACT_NAME, Preprocessor

WEIGHTS = "model.pt"
MODEL_SPEC = "model.json"
MODEL_FILES = (WEIGHTS, MODEL_SPEC, ARTIFACT_NAME)  # what a registered model needs (no training state)
TRAINING_STATE = "optimizer.pt"
PROGRESS = "progress.json"
LIVE_WEIGHTS, AVERAGE_COUNT = "live_weights", "average_count"  # training state keys with train.ema_decay


def _torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(directory: Path, model: RankingModel, preprocessor: Preprocessor, extra: dict | None = None) -> Path:
    directory = Path(directory)
    spec = {**model.config(), "layout": asdict(preprocessor.layout()), **(extra or {})}
    _torch_save(model.state_dict(), directory / WEIGHTS)
    write_json_atomic(spec, directory / MODEL_SPEC, indent=None)
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


# --- training state -------------------------------------------------------------------------------------
def save_training_state(directory: Path, optimizers: dict, schedulers: dict, progress: dict,
                        averaged=None, live_model: RankingModel | None = None) -> None:
    """Beside the model files: every optimizer and scheduler (``<name>``, ``<name>_scheduler``) and the
    position training resumes from (``progress``). With a moving average of the weights (``averaged``, whose
    copy the model files hold), also the trained weights of ``live_model`` and the average's step count."""
    directory = Path(directory)
    states = {**{name: opt.state_dict() for name, opt in optimizers.items()},
              **{f"{name}_scheduler": sch.state_dict() for name, sch in schedulers.items()}}
    if averaged is not None:
        states[LIVE_WEIGHTS] = live_model.state_dict()
        states[AVERAGE_COUNT] = averaged.n_averaged
    _torch_save(states, directory / TRAINING_STATE)
    write_json_atomic(progress, directory / PROGRESS, indent=None)


def restore_training_state(directory: Path, model: RankingModel, optimizers: dict, schedulers: dict,
                           averaged=None) -> dict:
    """Load the weights, optimizers and schedulers of a training checkpoint in place (with ``averaged``: the
    model files into the average, the trained weights into ``model``); returns its progress."""
    directory = Path(directory)
    weights = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
    states = torch.load(directory / TRAINING_STATE, map_location="cpu", weights_only=True)
    if averaged is None:
        model.load_state_dict(weights)
    else:
        if LIVE_WEIGHTS not in states:
            raise ValueError(f"{directory} was written without a moving average of the weights (train.ema_decay "
                             "unset): resume it with the same setting")
        averaged.module.load_state_dict(weights)
        averaged.n_averaged.copy_(states[AVERAGE_COUNT])
        model.load_state_dict(states[LIVE_WEIGHTS])
    for name, opt in optimizers.items():
        opt.load_state_dict(states[name])
        schedulers[name].load_state_dict(states[f"{name}_scheduler"])
    return read_progress(directory)


def read_progress(directory: Path) -> dict:
    return json.loads((Path(directory) / PROGRESS).read_text())
