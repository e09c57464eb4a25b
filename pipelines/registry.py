"""MLflow tracking and the model registry (aliases, never the deprecated stages).

The registered model is an MLflow pyfunc whose artifact is the checkpoint directory (weights, model spec,
preprocessing artifact): it takes *raw* feature rows and returns click probabilities, so whoever loads it
(the Ray Serve ranker, a batch job, ``mlflow models serve``) applies exactly the training preprocessing.
"""

from __future__ import annotations

import getpass
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    pass


def tracking_uri_for(configured: str | None, workspace) -> str:
    """The config's ``registry.tracking_uri``, else the workspace's sqlite file.

    Deliberately not ``$MLFLOW_TRACKING_URI``: MLflow 3's ``set_tracking_uri`` writes that variable, so it would
    leak one pipeline's server into the next run in the same process. A config can say
    ``tracking_uri: ${MLFLOW_TRACKING_URI}`` to take it from the environment explicitly."""
    return configured or workspace.mlflow_tracking_uri


def setup_tracking(configured_uri: str | None, experiment: str, workspace) -> str:
    """Point MLflow at the tracking URI (see :func:`tracking_uri_for`) and make sure ``experiment`` exists;
    returns the tracking URI in use."""
    tracking_uri = tracking_uri_for(configured_uri, workspace)
    artifact_root = workspace.mlflow_artifacts
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        # A tracking server decides its artifact store (e.g. proxied S3); only the embedded mode names a folder.
        remote = tracking_uri.startswith(("http://", "https://"))
        location = artifact_root.resolve().as_uri() if not remote else None
        client.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return tracking_uri


class MixrecRanker(mlflow.pyfunc.PythonModel):
    """Raw feature rows (a DataFrame with the schema's model columns) -> click probabilities."""

    def load_context(self, context):
        from .checkpoint import load_checkpoint

        self.model, self.preprocessor, self.spec = load_checkpoint(Path(context.artifacts["checkpoint"]))

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        import torch

        features = self.preprocessor.transform(frame)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(features["categorical"]), torch.from_numpy(features["dense"]))
        return torch.sigmoid(logits).numpy()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.score(model_input)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"mixrec=={version('mixrec')}", f"torch=={version('torch').split('+')[0]}",
            f"mlflow=={version('mlflow')}", f"pandas=={version('pandas')}"]


@dataclass
class RegisteredVersion:
    name: str
    version: str
    aliases: list[str]
    run_id: str


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
        for name in ("model.pt", "model.json", "preprocessing.json"):
            shutil.copy2(Path(checkpoint_dir) / name, artifact / name)
        info = mlflow.pyfunc.log_model(name="model", python_model=ranker, artifacts={"checkpoint": str(artifact)},
                                       signature=signature, input_example=input_example,
                                       pip_requirements=_pip_requirements())
    client = mlflow.MlflowClient()
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags or {})
    version = str(mv.version)
    _move_alias(client, model_name, CHALLENGER, version, reason="new version registered")
    if _alias_version(client, model_name, CHAMPION) is None:
        _move_alias(client, model_name, CHAMPION, version, reason="first version of the model")
    return describe_version(model_name, version)


def _alias_version(client, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _move_alias(client, name: str, alias: str, version: str, reason: str) -> None:
    """Point ``alias`` at ``version`` and record who moved it, when, why, and from where, as version tags."""
    previous = _alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(name, version, f"alias.{alias}.set_by", getpass.getuser())
    client.set_model_version_tag(name, version, f"alias.{alias}.set_at", stamp)
    client.set_model_version_tag(name, version, f"alias.{alias}.reason", reason)
    client.set_model_version_tag(name, version, f"alias.{alias}.previous", previous or "")


def describe_version(name: str, version: str) -> RegisteredVersion:
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version)
    model = client.get_registered_model(name)
    aliases = sorted(a for a, v in model.aliases.items() if str(v) == str(version))
    return RegisteredVersion(name=name, version=str(mv.version), aliases=aliases, run_id=mv.run_id)


def promote(model_name: str, version: str, reason: str = "manual promotion") -> RegisteredVersion:
    """Move ``champion`` to ``version``."""
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(model_name, str(version))
    except mlflow.exceptions.MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
        raise RegistryError(f"model {model_name!r} has no version {version!r}; versions: {versions}") from None
    _move_alias(client, model_name, CHAMPION, str(version), reason=reason)
    return describe_version(model_name, str(version))


def resolve_alias(model_name: str, alias: str) -> str:
    version = _alias_version(mlflow.MlflowClient(), model_name, alias)
    if version is None:
        raise RegistryError(f"model {model_name!r} has no version with alias {alias!r}")
    return version


def load_ranker(model_name: str, version: str) -> MixrecRanker:
    """Load a registered version as the :class:`MixrecRanker` (for the fast in-process path)."""
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    return pyfunc.unwrap_python_model()
