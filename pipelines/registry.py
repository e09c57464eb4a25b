"""MLflow tracking and the model registry's aliases (never the deprecated stages).

The public alias API: :func:`move_alias` (recorded: version tags and an append-only alias log),
:func:`alias_version`, :func:`resolve_alias`, :func:`check_version_exists`, :func:`describe_version`,
:func:`promote` (compare-and-set), :func:`rollback`, :func:`alias_log`. Every move runs under the registry lock
(:func:`registry_lock`, :mod:`.registry_lock`: a file lock beside the sqlite database, or a PostgreSQL advisory
lock in a shared backend) and is crash-consistent: its log entry is written ahead as the model's
``alias_pending`` tag, and the next registry operation completes (the alias moved) or drops (it did not) an
interrupted move (:func:`repair`). The registered model itself is :mod:`.pyfunc`; its lineage tags are
:mod:`.lineage`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import threading
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
PENDING_TAG = "alias_pending"  # the write-ahead record of the move in progress
CRASH_ENV = "MIXREC_REGISTRY_CRASH_AT"  # fault injection for the crash tests: exit at this step of a move
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


def setup_tracking(configured_uri: str | None, experiment: str, workspace, lock_uri: str | None = None) -> str:
    """Point MLflow at the tracking URI (see :func:`tracking_uri_for`), make sure ``experiment`` exists and
    pick the registry lock (:func:`registry_lock_path`); returns the tracking URI in use."""
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
    set_registry_lock(registry_lock_path(tracking_uri, workspace.root, lock_uri))
    return tracking_uri


# --- the registry lock ----------------------------------------------------------------------------------
def registry_lock_path(tracking_uri: str, fallback_dir: Path, lock_uri: str | None = None) -> Path | str:
    """What serialises alias moves: a PostgreSQL advisory lock in ``lock_uri`` (``registry.lock_uri``: the
    database behind a shared ``mlflow server``) or in the tracking URI itself when that is PostgreSQL; else a
    lock file next to the sqlite database for ``sqlite:///`` URIs, else in ``fallback_dir`` (a server-backed
    registry without ``lock_uri``: the file then only serialises moves from this host, and the re-read in
    :func:`move_alias` detects a race with another host)."""
    for uri in (lock_uri, tracking_uri):
        if uri and uri.startswith(("postgresql://", "postgresql+", "postgres://")):
            return uri
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///") + ".lock")
    return Path(fallback_dir) / "registry.lock"


_LOCK_TARGET: Path | str | None = None


def set_registry_lock(target: Path | str | None) -> None:
    """Set by :func:`setup_tracking` (see :func:`registry_lock_path`); alias moves in this process take it."""
    global _LOCK_TARGET
    _LOCK_TARGET = target


_FILE_LOCKS: dict[Path, object] = {}
_HELD = threading.local()  # per thread: how deep inside registry_lock() it is


@contextmanager
def registry_lock() -> Iterator[None]:
    """Hold the registry lock (no-op before :func:`setup_tracking` picked one). Re-entrant within a thread;
    excludes other threads and other processes (flock on the file, or a session-level PostgreSQL advisory lock
    on a connection of this thread's own; either is released by the OS/server when the process dies)."""
    target = _LOCK_TARGET
    if target is None or getattr(_HELD, "depth", 0):
        _HELD.depth = getattr(_HELD, "depth", 0) + 1
        try:
            yield
        finally:
            _HELD.depth -= 1
        return
    with (_pg_advisory_lock(target) if isinstance(target, str) else _file_lock(target)):
        _HELD.depth = 1
        try:
            yield
        finally:
            _HELD.depth = 0


def _file_lock(path: Path):
    from filelock import FileLock

    if path not in _FILE_LOCKS:
        path.parent.mkdir(parents=True, exist_ok=True)
        _FILE_LOCKS[path] = FileLock(str(path), timeout=LOCK_TIMEOUT_S)
    return _FILE_LOCKS[path]


ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"mixrec-registry").digest()[:8], "big", signed=True)


@contextmanager
def _pg_advisory_lock(uri: str) -> Iterator[None]:
    """``pg_advisory_lock`` on a connection of its own, waiting at most :data:`LOCK_TIMEOUT_S`."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SET lock_timeout = '{int(LOCK_TIMEOUT_S)}s'"))
            try:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            except sa.exc.OperationalError as err:
                raise RegistryError(f"the registry lock in {engine.url.render_as_string(hide_password=True)} "
                                    f"was not free within {LOCK_TIMEOUT_S} s: another promotion holds it") from err
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                conn.commit()
    finally:
        engine.dispose()


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
    """Every alias move of the model, oldest first (registered-model tags ``alias_log.000001`` ...), after
    completing or dropping a move a crash interrupted."""
    with registry_lock():
        repair(client, name)
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(ALIAS_LOG_PREFIX))]


def _step(name: str) -> None:
    """A named point between the writes of a move; the crash tests end the process here (``$CRASH_ENV``)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(70)


def _record(client, name: str, entry: dict) -> None:
    """Write a move's audit record (version tags, alias-log entry), then clear the write-ahead tag. Idempotent:
    every write is keyed by the entry, so a repair may redo any part of it."""
    alias, version = entry["alias"], entry["version"]
    for key, value in (("set_by", entry["by"]), ("set_at", entry["at"]), ("reason", entry["reason"]),
                       ("previous", entry["previous"] or "")):
        client.set_model_version_tag(name, version, f"alias.{alias}.{key}", value)
    _step("tags")
    client.set_registered_model_tag(name, f"{ALIAS_LOG_PREFIX}{entry['seq']:06d}", json.dumps(entry))
    _step("log")
    client.delete_registered_model_tag(name, PENDING_TAG)


def repair(client, name: str) -> dict | None:
    """Finish or drop a move a crash interrupted (call under the registry lock): when the alias points at the
    pending entry's version the move happened and its record is completed; otherwise it never happened and the
    write-ahead tag is dropped (nothing else was written before the alias moved). Returns the entry repaired."""
    try:
        raw = client.get_registered_model(name).tags.get(PENDING_TAG)
    except mlflow.exceptions.MlflowException:
        return None
    if not raw:
        return None
    entry = json.loads(raw)
    if alias_version(client, name, entry["alias"]) == entry["version"]:
        _record(client, name, {**entry, "recovered": True})
    else:
        client.delete_registered_model_tag(name, PENDING_TAG)
    return entry


def move_alias(client, name: str, alias: str, version: str, reason: str) -> None:
    """Point ``alias`` at ``version`` and record who moved it, when, why, and from where: as version tags
    (``alias.<alias>.*``, latest move) and as one entry of the model's append-only alias log.

    Runs under the registry lock, so the read of the previous version, the move and the log entry are one
    step for every process sharing the lock; the entry is written ahead (``alias_pending``) so a crash at any
    point leaves a move that :func:`repair` completes or drops. The re-read afterwards catches a writer that
    ignores the lock."""
    with registry_lock():
        repair(client, name)
        previous = alias_version(client, name, alias)
        seq = len([k for k in client.get_registered_model(name).tags if k.startswith(ALIAS_LOG_PREFIX)]) + 1
        entry = {"seq": seq, "alias": alias, "version": version, "previous": previous, "by": getpass.getuser(),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason[:1000]}
        client.set_registered_model_tag(name, PENDING_TAG, json.dumps(entry))
        _step("intent")
        client.set_registered_model_alias(name, alias, version)
        _step("alias")
        _record(client, name, entry)
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
        repair(client, model_name)  # the previous-champion tag read next must be complete
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

