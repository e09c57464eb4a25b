"""Alias moves against one real sqlite MLflow registry from many threads at once: the registry lock makes each
move (read previous, set alias, version tags, alias-log entry) one step, so the log is a consistent chain.

No Ray needed; versions are registered without artifacts (alias bookkeeping does not look at them)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import mlflow
import pytest

from mixrec.pipelines import registry
from mixrec.pipelines.registry import CHAMPION, RegistryError
from mixrec.pipelines.workspace import Workspace

pytestmark = pytest.mark.integration

MODEL = "concurrency-model"


@pytest.fixture(scope="module")
def bare_registry(tmp_path_factory):
    """A fresh workspace registry with versions 1..4 of MODEL; restores the tracking URI (and its lock) after."""
    previous_uri = mlflow.get_tracking_uri()
    tmp_path = tmp_path_factory.mktemp("registry")
    ws = Workspace(tmp_path).create()
    uri = registry.setup_tracking(None, "concurrency", ws)
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL)
    for _ in range(4):
        client.create_model_version(MODEL, source=str(tmp_path), run_id=None)
    yield client, uri, tmp_path
    mlflow.set_tracking_uri(previous_uri)
    if previous_uri.startswith("sqlite:///"):
        registry.set_registry_lock(registry.registry_lock_path(previous_uri, tmp_path))


def test_lock_file_sits_next_to_the_sqlite_db(bare_registry):
    _, uri, tmp_path = bare_registry
    assert registry.registry_lock_path(uri, tmp_path) == tmp_path / "mlflow.db.lock"
    assert registry.registry_lock_path("http://mlflow:5000", tmp_path) == tmp_path / "registry.lock"
    assert registry.registry_lock_path("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"  # advisory lock
    assert registry.registry_lock_path("http://mlflow:5000", tmp_path, "postgresql://u@h/db") == "postgresql://u@h/db"


def test_concurrent_promotions_leave_a_consistent_registry(bare_registry):
    """6 threads x 2 promotions each, all released at once by a barrier. (Without the lock this fails:
    sqlite IntegrityErrors on the tags, lost alias-log entries.)"""
    client, _, _ = bare_registry
    registry.promote(MODEL, "1", reason="initial")
    start = len(registry.alias_log(client, MODEL))
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def promoter(k: int) -> None:
        try:
            barrier.wait()
            for j in range(2):
                registry.promote(MODEL, str(1 + (k + j) % 4), reason=f"thread {k} move {j}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=promoter, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    full = registry.alias_log(client, MODEL)
    assert [e["seq"] for e in full] == list(range(1, len(full) + 1))  # no entry overwritten
    log = full[start - 1:]
    assert len(log) == 1 + 6 * 2 and all(e["alias"] == CHAMPION for e in log)  # no move lost
    for before, after in zip(log, log[1:], strict=False):
        assert after["previous"] == before["version"], (before, after)  # each move saw the one before it
    champion = registry.resolve_alias(MODEL, CHAMPION)
    assert champion == log[-1]["version"]
    tags = client.get_model_version(MODEL, champion).tags
    assert tags[f"alias.{CHAMPION}.reason"] == log[-1]["reason"] and tags[f"alias.{CHAMPION}.set_by"]


def test_compare_and_set_refuses_a_stale_evaluation_and_rollback_restores(bare_registry):
    client, _, _ = bare_registry
    registry.promote(MODEL, "1", reason="evaluation baseline")
    registry.promote(MODEL, "2", reason="someone else won the race")
    with pytest.raises(RegistryError, match="moved from v1 to v2"):
        registry.promote(MODEL, "3", reason="evaluated against v1", expected_champion="1")
    assert registry.resolve_alias(MODEL, CHAMPION) == "2"
    mv = registry.rollback(MODEL, reason="bad release")
    assert mv.version == "1" and CHAMPION in mv.aliases
    last = registry.alias_log(client, MODEL)[-1]
    assert last["previous"] == "2" and last["reason"] == "bad release (from v2)"


CRASHING_PROMOTION = """
import sys
from mixrec.pipelines import registry
from mixrec.pipelines.workspace import Workspace
registry.setup_tracking(None, "concurrency", Workspace.resolve(sys.argv[1]))
registry.promote(sys.argv[2], sys.argv[3], reason="interrupted move")
"""


@pytest.mark.parametrize("step", ["intent", "alias", "tags", "log"])
def test_a_move_interrupted_at_any_step_is_completed_or_dropped_on_next_use(bare_registry, step):
    """A process killed (os._exit) between the writes of a champion move: the next registry use sees either no
    move at all or the whole move (alias, version tags, log entry), never half of one."""
    client, _, tmp_path = bare_registry
    registry.promote(MODEL, "1", reason="before the crash")
    before = registry.alias_log(client, MODEL)
    proc = subprocess.run([sys.executable, "-c", CRASHING_PROMOTION, str(tmp_path), MODEL, "4"],
                          env={**os.environ, registry.CRASH_ENV: step}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 70, proc.stderr[-2000:]  # it died at the named step
    assert registry.PENDING_TAG in client.get_registered_model(MODEL).tags  # ... leaving the write-ahead record

    log = registry.alias_log(client, MODEL)  # next use: repaired
    assert registry.PENDING_TAG not in client.get_registered_model(MODEL).tags
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    if step == "intent":  # died before the alias moved: no move happened, and none is recorded
        assert registry.resolve_alias(MODEL, CHAMPION) == "1" and log == before
    else:  # the alias moved: its record is complete, whatever part of it the crash cut off
        assert registry.resolve_alias(MODEL, CHAMPION) == "4" and log[:-1] == before
        assert (log[-1]["version"], log[-1]["previous"], log[-1]["reason"]) == ("4", "1", "interrupted move")
        tags = client.get_model_version(MODEL, "4").tags
        assert tags[f"alias.{CHAMPION}.reason"] == "interrupted move" and tags[f"alias.{CHAMPION}.previous"] == "1"
    champion = registry.resolve_alias(MODEL, CHAMPION)
    registry.promote(MODEL, "2", reason="after the repair")  # and the registry keeps working
    assert registry.alias_log(client, MODEL)[-1]["previous"] == champion
