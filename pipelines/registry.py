"""MLflow tracking and the model registry (aliases, never the deprecated stages).

The registered model is an MLflow pyfunc whose artifact is the checkpoint directory (weights, model spec,
preprocessing artifact): it takes *raw* feature rows and returns click probabilities, so whoever loads it
(the Ray Serve ranker, a batch job, ``mlflow models serve``) applies exactly the training preprocessing.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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
    set_registry_lock(registry_lock_path(tracking_uri, workspace.root))
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
    with registry_lock():  # two first registrations at once: only one becomes champion
        _move_alias(client, model_name, CHALLENGER, version, reason="new version registered")
        if _alias_version(client, model_name, CHAMPION) is None:
            _move_alias(client, model_name, CHAMPION, version, reason="first version of the model")
    return describe_version(model_name, version)


def _alias_version(client, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


ALIAS_LOG_PREFIX = "alias_log."
LOCK_TIMEOUT_S = 120


def registry_lock_path(tracking_uri: str, fallback_dir: Path) -> Path:
    """The lock file that serialises alias moves: next to the sqlite database for ``sqlite:///`` URIs, else in
    ``fallback_dir`` (a server-backed registry: the lock then only serialises moves from this host, and the
    compare-and-set re-read in :func:`_move_alias` detects a race with another host)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///") + ".lock")
    return Path(fallback_dir) / "registry.lock"


_LOCK_PATH: Path | None = None


def set_registry_lock(path: Path | None) -> None:
    """Set by :func:`setup_tracking`; alias moves in this process take that lock."""
    global _LOCK_PATH
    _LOCK_PATH = path


_LOCKS: dict[Path, object] = {}


@contextmanager
def registry_lock() -> Iterator[None]:
    """Hold the registry's file lock (no-op before :func:`setup_tracking` picked one). Re-entrant within a
    thread; excludes other threads (one lock object per path, thread-local state) and other processes (flock)."""
    if _LOCK_PATH is None:
        yield
        return
    from filelock import FileLock

    if _LOCK_PATH not in _LOCKS:
        _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        _LOCKS[_LOCK_PATH] = FileLock(str(_LOCK_PATH), timeout=LOCK_TIMEOUT_S)
    with _LOCKS[_LOCK_PATH]:
        yield


def alias_log(client, name: str) -> list[dict]:
    """Every alias move of the model, oldest first (registered-model tags ``alias_log.000001`` ...)."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(ALIAS_LOG_PREFIX))]


def _move_alias(client, name: str, alias: str, version: str, reason: str) -> None:
    """Point ``alias`` at ``version`` and record who moved it, when, why, and from where: as version tags
    (``alias.<alias>.*``, latest move) and as one entry of the model's append-only alias log.

    Runs under the registry lock, so the read of the previous version, the move and the log entry are one
    step for every process on this host; the re-read afterwards catches a writer that ignores the lock."""
    with registry_lock():
        previous = _alias_version(client, name, alias)
        client.set_registered_model_alias(name, alias, version)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        user = getpass.getuser()
        client.set_model_version_tag(name, version, f"alias.{alias}.set_by", user)
        client.set_model_version_tag(name, version, f"alias.{alias}.set_at", stamp)
        client.set_model_version_tag(name, version, f"alias.{alias}.reason", reason)
        client.set_model_version_tag(name, version, f"alias.{alias}.previous", previous or "")
        seq = len([k for k in client.get_registered_model(name).tags if k.startswith(ALIAS_LOG_PREFIX)]) + 1
        entry = {"seq": seq, "alias": alias, "version": version, "previous": previous, "by": user, "at": stamp,
                 "reason": reason[:1000]}
        client.set_registered_model_tag(name, f"{ALIAS_LOG_PREFIX}{seq:06d}", json.dumps(entry))
        now = _alias_version(client, name, alias)
        if now != version:
            raise RegistryError(f"concurrent alias move: {alias!r} of {name!r} points at v{now} right after this "
                                f"process set it to v{version}; re-check the alias log before retrying")


def describe_version(name: str, version: str) -> RegisteredVersion:
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version)
    model = client.get_registered_model(name)
    aliases = sorted(a for a, v in model.aliases.items() if str(v) == str(version))
    return RegisteredVersion(name=name, version=str(mv.version), aliases=aliases, run_id=mv.run_id)


def promote(model_name: str, version: str, reason: str = "manual promotion",
            expected_champion: str | None = None) -> RegisteredVersion:
    """Move ``champion`` to ``version`` (no gate: see :mod:`mixrec.pipelines.promotion` for the gated path).

    ``expected_champion``: compare-and-set; refuse when the champion is no longer that version (another
    promotion won the race while this one was being evaluated)."""
    client = mlflow.MlflowClient()
    _check_version_exists(client, model_name, str(version))
    with registry_lock():
        current = _alias_version(client, model_name, CHAMPION)
        if expected_champion is not None and current != str(expected_champion):
            raise RegistryError(f"champion of {model_name!r} moved from v{expected_champion} to v{current} while "
                                f"v{version} was being evaluated; evaluate again against the new champion")
        _move_alias(client, model_name, CHAMPION, str(version), reason=reason)
    return describe_version(model_name, str(version))


def _check_version_exists(client, model_name: str, version: str) -> None:
    try:
        client.get_model_version(model_name, version)
    except mlflow.exceptions.MlflowException:
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
        except mlflow.exceptions.MlflowException:
            versions = []
        raise RegistryError(f"model {model_name!r} has no version {version!r}; versions: {versions}") from None


def rollback(model_name: str, reason: str = "rollback") -> RegisteredVersion:
    """Move ``champion`` back to the version it pointed at before its last move (the current champion's
    ``alias.champion.previous`` tag). A second rollback swaps back: the log keeps every move."""
    client = mlflow.MlflowClient()
    with registry_lock():
        current = _alias_version(client, model_name, CHAMPION)
        if current is None:
            raise RegistryError(f"model {model_name!r} has no champion to roll back")
        previous = client.get_model_version(model_name, current).tags.get(f"alias.{CHAMPION}.previous", "")
        if not previous:
            raise RegistryError(f"champion v{current} of {model_name!r} has no previous champion to restore")
        _move_alias(client, model_name, CHAMPION, previous, reason=f"{reason} (from v{current})")
    return describe_version(model_name, previous)


def resolve_alias(model_name: str, alias: str) -> str:
    version = _alias_version(mlflow.MlflowClient(), model_name, alias)
    if version is None:
        raise RegistryError(f"model {model_name!r} has no version with alias {alias!r}")
    return version


def load_ranker(model_name: str, version: str) -> MixrecRanker:
    """Load a registered version as the :class:`MixrecRanker` (for the fast in-process path)."""
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    return pyfunc.unwrap_python_model()


# --- lineage -----------------------------------------------------------------------------------------------
def file_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of ``paths`` in the given order (the dataset's Parquet sources)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def schema_digest(schema) -> str:
    """sha256 of the dataset schema (columns, kinds, sources) as canonical JSON."""
    return hashlib.sha256(json.dumps(asdict(schema), sort_keys=True).encode()).hexdigest()


def git_commit(directory: Path) -> str | None:
    """HEAD of the git checkout holding ``directory`` (an installed wheel has none: None)."""
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def lineage_tags(sources: list[Path], schema, feature_service: str, config: dict) -> dict[str, str]:
    """The tags every registered version carries: what data, which schema and features, which code, which config."""
    tags = {"lineage.dataset_sha256": file_digest(sources), "lineage.schema_sha256": schema_digest(schema),
            "lineage.feast_feature_service": feature_service,
            "lineage.config": json.dumps(config, sort_keys=True, separators=(",", ":"))}
    commit = git_commit(Path(__file__).parent)
    if commit:
        tags["lineage.git_commit"] = commit
    return tags
