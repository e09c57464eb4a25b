"""mixrec.models — pure-PyTorch CTR ranking model zoo.

Public interface::

    layout = FeatureLayout(cardinalities=(101, 53, 7), n_dense=4)
    model = build_model("rankmixer", layout, d_model=32)
    batch = Batch.from_arrays({"categorical": ..., "dense": ..., "label": ...})
    logits = model(batch.categorical, batch.dense)  # [B]
    loss = bce(logits, y) + model.auxiliary_loss()
    model.flops_per_example(); model.num_parameters(); model.config()

Imports only torch / numpy / the standard library.
"""

from . import sizes  # noqa: F401  (registers the named sizes with the zoo)
from .base import FeatureLayout, RankingModel
from .batch import Batch
from .dcnv2 import DCNv2
from .dnn import DNN
from .rankmixer import RankMixer
from .rankmixer_moe import RankMixerMoE
from .tokenmixer_large import TokenMixerLarge, TokenMixerLargeMoE
from .unimixer import UniMixer, UniMixerMoE, UniMixingLite
from .wukong import Wukong
from .zoo import (
    ModelSummary,
    available_models,
    available_sizes,
    build_model,
    model_summary_table,
    register_model,
)

for _cls in (DNN, DCNv2, RankMixer, RankMixerMoE, TokenMixerLarge, TokenMixerLargeMoE, UniMixer, UniMixerMoE, UniMixingLite,
             Wukong):
    register_model(_cls)

__all__ = [
    "Batch",
    "DCNv2",
    "DNN",
    "RankMixerMoE",
    "TokenMixerLarge",
    "TokenMixerLargeMoE",
    "UniMixer",
    "UniMixerMoE",
    "UniMixingLite",
    "Wukong",
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
