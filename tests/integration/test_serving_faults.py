"""Faults of the served app's dependencies, each made real (no mock of Feast, MLflow or Serve):

* a corrupt row in the real sqlite online store: the requests that need it get 503 + Retry-After, the
  requests batched with them are scored (the shared app, the row restored after);
* a request timeout: a request not scored within ``serve.request_timeout_s`` gets 503 + Retry-After;
* an unloadable challenger (its registered weights overwritten): the champion serves alone and ``/arms``
  says why the arm was dropped; a missing champion alias: ``mixrec serve`` refuses in one line, exit 2.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import mlflow
import pandas as pd
import pytest
import yaml

from mixrec.features.schema import SYNTHETIC_SCHEMA
from mixrec.pipelines.config import parse_config
from mixrec.pipelines.registry import CHALLENGER, CHAMPION

pytestmark = pytest.mark.integration

MIXREC = str(Path(sys.executable).with_name("mixrec"))
BROKEN_USER = 5


def _user_rows_key(store, user: int) -> bytes:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)]),
                                entity_key_serialization_version=store.config.entity_key_serialization_version)


@pytest.fixture
def corrupt_user_row(served):
    """Overwrite the stored feature values of one user in the real sqlite online store with bytes that are
    no protobuf; the original values are written back afterwards. Each write rewrites the materialization
    marker, as a materialization does, so that replicas drop the user features they cached."""
    from mixrec.features import feast_repo

    ws = served["first"].workspace
    key = _user_rows_key(feast_repo.open_store(ws.feast_repo), BROKEN_USER)
    with sqlite3.connect(ws.online_store_db) as db:
        (table,) = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%user_features'"
                              ).fetchone()
        saved = db.execute(f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?', (key,)).fetchall()
        assert saved, f"user {BROKEN_USER} has no online features"
        db.execute(f'UPDATE "{table}" SET value = ? WHERE entity_key = ?', (b"\xff" * 8, key))
    feast_repo.write_materialized_marker(ws.materialized_marker)
    try:
        yield
    finally:
        with sqlite3.connect(ws.online_store_db) as db:
            db.executemany(f'UPDATE "{table}" SET value = ? WHERE entity_key = ? AND feature_name = ?',
                           [(value, key, name) for name, value in saved])
        feast_repo.write_materialized_marker(ws.materialized_marker)


def test_an_online_store_failure_is_503_for_its_requests_only(served, corrupt_user_row):
    users = [BROKEN_USER] * 4 + list(range(20, 60))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served["url"], timeout=60) as client:
            return await asyncio.gather(*(client.post("/rank", json={"user_id": u, "items": [1, 2, 3]})
                                          for u in users))

    responses = asyncio.run(burst())
    broken, healthy = responses[:4], responses[4:]
    assert all(r.status_code == 503 and r.headers["retry-after"] == "1" and "online feature store" in r.text
               for r in broken), [(r.status_code, r.text[:200]) for r in broken]
    assert [r.status_code for r in healthy] == [200] * len(healthy), [r.text[:200] for r in healthy if r.status_code != 200]


def test_a_request_not_scored_in_time_is_503_with_retry_after(served, deployed_with):
    with deployed_with(request_timeout_s=0.001, retry_after_s=3):
        r = served["client"].post("/rank", json={"user_id": 1, "items": [1, 2]})
        assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
        assert "request_timeout_s" in r.text
    assert served["client"].post("/rank", json={"user_id": 1, "items": [1, 2]}).status_code == 200


@pytest.fixture
def faulty_model(served, tmp_path):
    """Model ``mixrec-faults``: v1 (champion) a copy of the shared app's v1, v2 (challenger) the same copy
    with its stored files overwritten after registration, so that loading it fails."""
    from mixrec.pipelines import pyfunc

    name, ws = "mixrec-faults", served["first"].workspace
    local = mlflow.artifacts.download_artifacts("models:/mixrec-ranker/1", dst_path=str(tmp_path / "dl"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(f"{local}/data/checkpoint", ckpt)  # the model's data_path
    example = pd.read_parquet(ws.holdout_path).head(5)[list(SYNTHETIC_SCHEMA.model_columns)]
    with mlflow.start_run(run_name="faults"):
        versions = [pyfunc.log_and_register(ckpt, example, name).version for _ in range(2)]
    assert versions == ["1", "2"]
    stored = Path(urlsplit(mlflow.MlflowClient().get_model_version_download_uri(name, "2")).path)  # local store
    broken = [p for p in stored.rglob("*") if p.is_file() and p.suffix in (".pt", ".json")]
    assert broken, list(stored.rglob("*"))
    for path in broken:
        path.write_bytes(b"not a model")
    data = served["cfg"].to_dict()
    data["registry"]["model_name"] = name
    data["serve"].update(app_name="mixrec-faults", route_prefix="/faults", ranker_replicas=1)
    yield name, parse_config(data)
    mlflow.MlflowClient().delete_registered_model(name)


def test_an_unloadable_challenger_is_dropped_and_a_missing_champion_refused(served, faulty_model, tmp_path):
    from mixrec.serving.server import deploy, stop_serving

    name, cfg = faulty_model
    try:
        url, plan = deploy(cfg)
        assert plan.arms == {CHAMPION: "1"} and plan.weights == {CHAMPION: 1.0}
        arms = httpx.get(f"{url}/arms", timeout=60).json()
        assert arms["versions"] == {CHAMPION: "1"} and arms["weights"] == {CHAMPION: 1.0}
        assert len(arms["warnings"]) == 1 and f"{CHALLENGER!r} (version 2) dropped: cannot be loaded" in arms["warnings"][0]
        r = httpx.post(f"{url}/rank", json={"user_id": 3, "items": [1, 2]}, timeout=60)
        assert r.status_code == 200 and r.json()["arm"] == CHAMPION, r.text
    finally:
        stop_serving(cfg)
    mlflow.MlflowClient().delete_registered_model_alias(name, CHAMPION)
    config_file = tmp_path / "faults.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.run([MIXREC, "serve", "--config", str(config_file)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: model {name!r} has no 'champion' alias: refusing to serve "
                                                "without one; train first, or `mixrec promote VERSION`"]
    assert served["client"].post("/rank", json={"user_id": 3, "items": [1, 2]}).status_code == 200
