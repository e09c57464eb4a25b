"""MLflow tracking and the model registry's aliases (never the deprecated stages).

The public alias API: :func:`move_alias` (recorded: version tags and an append-only alias log),
:func:`alias_version`, :func:`resolve_alias`, :func:`check_version_exists`, :func:`describe_version`,
:func:`promote` (compare-and-set), :func:`rollback`, :func:`alias_log`. Every move runs under the registry lock
(:func:`registry_lock`), a file lock beside the sqlite database. The registered model itself is
:mod:`.pyfunc`; its lineage tags are :mod:`.lineage`.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow

from .config import ENV_TRACKING_URI
from .errors import EXIT_BAD_INPUT

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIAS_LOG_PREFIX = "alias_log."
LOCK_TIMEOUT_S = 120


class RegistryError(RuntimeError):
    """The registry lacks what was asked for (a model, version or alias) or refused a move."""

    exit_code = EXIT_BAD_INPUT


def tracking_uri_for(configured: str | None, workspace) -> str:
    """The config's ``registry.tracking_uri``, else ``$MLFLOW_TRACKING_URI`` as the process started
    (:data:`~mixrec.pipelines.config.ENV_TRACKING_URI`), else the workspace's sqlite file.

    The variable is read once, when the config module is imported: MLflow 3's ``set_tracking_uri`` writes
    it, so reading it now would hand one pipeline's workspace database to the next run in the same process."""
    return configured or ENV_TRACKING_URI or workspace.mlflow_tracking_uri


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


# --- the registry lock ----------------------------------------------------------------------------------
def registry_lock_path(tracking_uri: str, fallback_dir: Path) -> Path:
    """The lock file that serialises alias moves: next to the sqlite database for ``sqlite:///`` URIs, else in
    ``fallback_dir`` (a server-backed registry: the lock then only serialises moves from this host, and the
    compare-and-set re-read in :func:`move_alias` detects a race with another host)."""
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


# --- aliases ----------------------------------------------------------------------------------------------
@dataclass
class RegisteredVersion:
    name: str
    version: str
    aliases: list[str]
    run_id: str


def alias_version(client, name: str, alias: str) -> str | None:
    """The version ``alias`` points at; None when the model has no such alias."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def alias_log(client, name: str) -> list[dict]:
    """Every alias move of the model, oldest first (registered-model tags ``alias_log.000001`` ...)."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(ALIAS_LOG_PREFIX))]


def move_alias(client, name: str, alias: str, version: str, reason: str) -> None:
    """Point ``alias`` at ``version`` and record who moved it, when, why, and from where: as version tags
    (``alias.<alias>.*``, latest move) and as one entry of the model's append-only alias log.

    Runs under the registry lock, so the read of the previous version, the move and the log entry are one
    step for every process on this host; the re-read afterwards catches a writer that ignores the lock."""
    with registry_lock():
        previous = alias_version(client, name, alias)
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
        now = alias_version(client, name, alias)
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
    check_version_exists(client, model_name, str(version))
    with registry_lock():
        current = alias_version(client, model_name, CHAMPION)
        if expected_champion is not None and current != str(expected_champion):
            raise RegistryError(f"champion of {model_name!r} moved from v{expected_champion} to v{current} while "
                                f"v{version} was being evaluated; evaluate again against the new champion")
        move_alias(client, model_name, CHAMPION, str(version), reason=reason)
    return describe_version(model_name, str(version))


def check_version_exists(client, model_name: str, version: str) -> None:
    """Raise :class:`RegistryError` (listing the versions there are) when ``version`` is not registered."""
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
        current = alias_version(client, model_name, CHAMPION)
        if current is None:
            raise RegistryError(f"model {model_name!r} has no champion to roll back")
        previous = client.get_model_version(model_name, current).tags.get(f"alias.{CHAMPION}.previous", "")
        if not previous:
            raise RegistryError(f"champion v{current} of {model_name!r} has no previous champion to restore")
        move_alias(client, model_name, CHAMPION, previous, reason=f"{reason} (from v{current})")
    return describe_version(model_name, previous)


def resolve_alias(model_name: str, alias: str) -> str:
    version = alias_version(mlflow.MlflowClient(), model_name, alias)
    if version is None:
        raise RegistryError(f"model {model_name!r} has no version with alias {alias!r}")
    return version




def __getattr__(name: str):
    # Versions registered before the pyfunc had a module of its own pickled their ranker class as
    # ``mixrec.pipelines.registry.MixrecRanker``: they keep loading.
    if name == "MixrecRanker":
        from .pyfunc import MixrecRanker

        return MixrecRanker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
