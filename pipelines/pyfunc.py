"""The registered model: an MLflow pyfunc whose artifact is the checkpoint directory (weights, model spec,
preprocessing artifact). It takes *raw* feature rows and returns click probabilities, so whoever loads it
(the Ray Serve ranker, a batch job, ``mlflow models serve``) applies exactly the training preprocessing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from mixrec.models.batch import Batch

from .checkpoint import MODEL_FILES, load_checkpoint
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


class MixrecRanker(mlflow.pyfunc.PythonModel):
    """Raw feature rows (a DataFrame with the schema's model columns) -> click probabilities."""

    def load_context(self, context):
        self.model, self.preprocessor, self.spec = load_checkpoint(Path(context.artifacts["checkpoint"]))

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        import torch

        batch = Batch.from_arrays(self.preprocessor.transform(frame))
        with torch.no_grad():
            logits = self.model(batch.categorical, batch.dense)
        return torch.sigmoid(logits).numpy()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.score(model_input)


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
    ranker = MixrecRanker()
    ranker.load_context(type("Ctx", (), {"artifacts": {"checkpoint": str(checkpoint_dir)}})())
    signature = infer_signature(input_example, ranker.score(input_example))
    with tempfile.TemporaryDirectory() as tmp:
        # Only what the model needs: not the optimizer state of the training checkpoint.
        artifact = Path(tmp) / "checkpoint"
        artifact.mkdir()
        for name in MODEL_FILES:
            shutil.copy2(Path(checkpoint_dir) / name, artifact / name)
        info = mlflow.pyfunc.log_model(name="model", python_model=ranker, artifacts={"checkpoint": str(artifact)},
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
    """Load a registered version as the :class:`MixrecRanker` (for the fast in-process path)."""
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    return pyfunc.unwrap_python_model()
