"""mixrec.models — pure-PyTorch CTR ranking model zoo.

Public interface::

    layout = FeatureLayout(cardinalities=(101, 53, 7), n_dense=4)
    model = build_model("rankmixer", layout, d_model=32)
    logits = model(categorical, dense)          # [B]
    loss = bce(logits, y) + model.auxiliary_loss()
    model.flops_per_example(); model.num_parameters(); model.config()

Imports only torch / numpy / the standard library.
"""

from .base import FeatureLayout, RankingModel
from .dnn import DNN
from .rankmixer import RankMixer
from .registry import (
    ModelSummary,
    available_models,
    available_sizes,
    build_model,
    model_summary_table,
    register_model,
)

for _cls in (DNN, RankMixer):
    register_model(_cls)

__all__ = [
    "DNN",
    "FeatureLayout",
    "ModelSummary",
    "RankMixer",
    "RankingModel",
    "available_models",
    "available_sizes",
    "build_model",
    "model_summary_table",
    "register_model",
]
