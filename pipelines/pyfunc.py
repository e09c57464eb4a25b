"""The registered model: an MLflow pyfunc whose data is the checkpoint directory (weights, model spec,
preprocessing artifact). It takes *raw* feature rows and returns click probabilities, so whoever loads it
(the Ray Serve ranker, a batch job, ``mlflow models serve``) applies exactly the training preprocessing.

Nothing in the artifact store is unpickled: the model is logged through MLflow's custom-flavor route
(``loader_module`` = this module, ``data_path`` = the checkpoint directory), so loading runs this installed
module's :func:`_load_pyfunc` on ``state_dict`` (``torch.load(weights_only=True)``) + JSON spec + JSON
preprocessing. Versions logged before (a cloudpickled ``python_model``) are read from their checkpoint files
by :func:`load_ranker`, never by unpickling.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mixrec.models.batch import Batch

from .checkpoint import MODEL_FILES, MODEL_SPEC, load_checkpoint
from .registry import (
    CHALLENGER,
    CHAMPION,
    RegisteredVersion,
    RegistryError,
    alias_version,
    describe_version,
    move_alias,
    registry_lock,
)


class MixrecRanker:
    """Raw feature rows (a DataFrame with the schema's model columns) -> click probabilities."""

    def __init__(self, model, preprocessor, spec: dict):
        self.model, self.preprocessor, self.spec = model, preprocessor, spec

    @classmethod
    def from_checkpoint(cls, directory: Path) -> MixrecRanker:
        """From a checkpoint directory (weights, model.json, preprocessing.json)."""
        return cls(*load_checkpoint(Path(directory)))

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """frame: [n rows] raw model columns -> [n] click probabilities."""
        import torch

        batch = Batch.from_arrays(self.preprocessor.transform(frame))
        with torch.no_grad():
            logits = self.model(batch.categorical, batch.dense)
        return torch.sigmoid(logits).numpy()

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """The pyfunc interface (``mlflow.pyfunc.load_model(...).predict``)."""
        return self.score(model_input)


def _load_pyfunc(data_path: str) -> MixrecRanker:
    """MLflow's custom-flavor loader: ``data_path`` is the logged checkpoint directory."""
    return MixrecRanker.from_checkpoint(Path(data_path))


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"mixrec=={version('mixrec')}", f"torch=={version('torch').split('+')[0]}",
            f"mlflow=={version('mlflow')}", f"pandas=={version('pandas')}"]


def log_and_register(checkpoint_dir: Path, input_example: pd.DataFrame, model_name: str,
                     tags: dict[str, str] | None = None) -> RegisteredVersion:
    """Log the checkpoint as a pyfunc model in the active run, register a new version, alias it
    ``challenger``, and ``champion`` too when the model has no champion yet."""
    from mlflow.models import infer_signature

    run = mlflow.active_run()
    if run is None:
        raise RegistryError("log_and_register needs an active MLflow run")
    ranker = MixrecRanker.from_checkpoint(checkpoint_dir)
    signature = infer_signature(input_example, ranker.score(input_example))
    with tempfile.TemporaryDirectory() as tmp:
        # Only what the model needs: not the optimizer state of the training checkpoint.
        artifact = Path(tmp) / "checkpoint"
        artifact.mkdir()
        for name in MODEL_FILES:
            shutil.copy2(Path(checkpoint_dir) / name, artifact / name)
        info = mlflow.pyfunc.log_model(name="model", loader_module=__name__, data_path=str(artifact),
                                       signature=signature, input_example=input_example,
                                       pip_requirements=_pip_requirements())
    client = mlflow.MlflowClient()
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags or {})
    version = str(mv.version)
    with registry_lock():  # two first registrations at once: only one becomes champion
        move_alias(client, model_name, CHALLENGER, version, reason="new version registered")
        if alias_version(client, model_name, CHAMPION) is None:
            move_alias(client, model_name, CHAMPION, version, reason="first version of the model")
    return describe_version(model_name, version)


def load_ranker(model_name: str, version: str) -> MixrecRanker:
    """Load a registered version as the :class:`MixrecRanker` (for the fast in-process path) from its files:
    weights, JSON spec and preprocessing, never a pickle (versions logged as a pickled ``python_model`` keep
    their checkpoint files under ``artifacts/checkpoint``: those are read instead)."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=tmp))
        flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
        directory = local / flavor["data"] if flavor.get("loader_module") == __name__ else local / LEGACY_CHECKPOINT
        if not (directory / MODEL_SPEC).exists():
            raise RegistryError(f"{model_name} v{version} holds no mixrec checkpoint ({directory.name}/{MODEL_SPEC})")
        return MixrecRanker.from_checkpoint(directory)


LEGACY_CHECKPOINT = "artifacts/checkpoint"  # where versions logged with a pickled python_model keep the files
