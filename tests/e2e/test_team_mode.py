"""Team mode on real services: MLflow through `mlflow server` on PostgreSQL, Feast with its registry on
PostgreSQL and its online store on Redis. Only URIs in the config differ from the embedded mode.

Each test run creates its own PostgreSQL databases and a Feast project of its own (Feast's Redis keys carry the
project name), and drops them afterwards. Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = ("127.0.0.1", 6379)


def _services_up() -> str | None:
    import psycopg2
    import redis

    try:
        psycopg2.connect(f"{PG}/postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as err:
        return f"PostgreSQL not reachable on 127.0.0.1:5432: {err}"
    try:
        redis.Redis(*REDIS, socket_connect_timeout=3).ping()
    except redis.RedisError as err:
        return f"Redis not reachable on 127.0.0.1:6379: {err}"
    return None


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


@pytest.fixture(scope="module")
def team(tmp_path_factory, free_port):
    problem = _services_up()
    if problem:
        pytest.skip(problem)
    import redis

    suffix = secrets.token_hex(4)
    mlflow_db, feast_db, project = f"mixrec_mlflow_{suffix}", f"mixrec_feast_{suffix}", f"team_{suffix}"
    tmp = tmp_path_factory.mktemp("team")
    _admin(f"CREATE DATABASE {mlflow_db}")
    _admin(f"CREATE DATABASE {feast_db}")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{PG}/{mlflow_db}",
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(tmp / "mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server not healthy after 180 s")
        yield {"tracking_uri": f"http://127.0.0.1:{port}", "feast_db": feast_db, "project": project,
               "mlflow_db_uri": f"{PG}/{mlflow_db}",
               "tmp": tmp, "serve_port": free_port()}
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # its huey consumers and workers share the group
        server.wait(30)
        r = redis.Redis(*REDIS)
        stale = list(r.scan_iter(match=f"*{project}*".encode()))
        if stale:
            r.delete(*stale)
        for db in (mlflow_db, feast_db):
            _admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_pipeline_and_serving_on_postgres_and_redis(ray_session, team):
    import mlflow
    import redis

    from mixrec.pipelines.config import parse_config
    from mixrec.pipelines.run import run_pipeline
    from mixrec.serving.server import start_serving, stop_serving

    cfg = parse_config({
        "workspace": str(team["tmp"] / "workspace"),
        "data": {"num_events": 3000, "num_users": 150, "num_items": 80, "days": 3, "seed": 9},
        "features": {"project": team["project"],
                     "online_store": {"type": "redis", "connection_string": "127.0.0.1:6379"},
                     "registry": {"registry_type": "sql", "cache_ttl_seconds": 60,
                                  "path": f"postgresql+psycopg://postgres@127.0.0.1:5432/{team['feast_db']}"}},
        "model": {"name": "dnn"},
        "train": {"num_workers": 1, "epochs": 1},
        "registry": {"tracking_uri": team["tracking_uri"], "model_name": "team-ranker"},
        "serve": {"port": team["serve_port"], "app_name": "mixrec-team", "route_prefix": "/team"},
    })
    result = run_pipeline(cfg, progress=lambda _: None)
    assert result.version == "1"

    # The registry lives in the server (PostgreSQL), artifacts are proxied by it.
    client = mlflow.MlflowClient(team["tracking_uri"])
    mv = client.get_model_version_by_alias("team-ranker", "champion")
    assert str(mv.version) == "1" and mv.source.startswith("models:/")
    # Feast wrote its registry tables to PostgreSQL and its online rows to Redis.
    import psycopg2

    with psycopg2.connect(f"{PG}/{team['feast_db']}") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM feature_views WHERE project_id = %s", (team["project"],))
        assert cur.fetchone()[0] == 2
    assert any(True for _ in redis.Redis(*REDIS).scan_iter(match=f"*{team['project']}*".encode(), count=1000))

    url = start_serving(cfg)
    try:
        r = httpx.post(f"{url}/rank", json={"user_id": 3, "items": [1, 2, 3]}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == "team-ranker" and r.json()["model_version"] == "1"
    finally:
        stop_serving(cfg)


RACE = """
import sys
from mixrec.pipelines import registry
from mixrec.pipelines.workspace import Workspace
tracking_uri, workspace, lock_uri, model, version = sys.argv[1:]
registry.setup_tracking(tracking_uri, "race", Workspace.resolve(workspace).create(), lock_uri)
try:
    registry.promote(model, version, reason=f"race for v{version}", expected_champion="1")
except registry.RegistryError as err:
    print(err)
    sys.exit(2)
"""


def _advisory_waiters(lock_uri: str) -> int:
    import psycopg2

    with psycopg2.connect(lock_uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        return cur.fetchone()[0]


def test_concurrent_promotions_from_two_workspaces_one_wins_the_other_is_refused(team):
    """Two processes with workspaces of their own promote different versions against the one `mlflow server`,
    both evaluated against champion v1. The registry lock is a PostgreSQL advisory lock in the server's
    database: this test holds it until both wait on it, then lets them race. Exactly one moves champion; the
    other sees the champion moved (compare-and-set) and is refused; the alias log has the one move."""
    import mlflow

    from mixrec.pipelines import registry
    from mixrec.pipelines.workspace import Workspace

    lock_uri, tracking_uri, tmp = team["mlflow_db_uri"], team["tracking_uri"], team["tmp"]
    previous_uri = mlflow.get_tracking_uri()
    try:
        registry.setup_tracking(tracking_uri, "race", Workspace(tmp / "ws-main").create(), lock_uri)
        client = mlflow.MlflowClient()
        client.create_registered_model("race")
        with mlflow.start_run() as run:
            pass
        for _ in range(3):
            client.create_model_version("race", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        registry.promote("race", "1", reason="baseline")
        with registry.registry_lock():
            procs = {v: subprocess.Popen([sys.executable, "-c", RACE, tracking_uri, str(tmp / f"ws-{v}"), lock_uri,
                                          "race", v], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for v in ("2", "3")}
            deadline = time.time() + 240
            while _advisory_waiters(lock_uri) < 2:
                assert all(p.poll() is None for p in procs.values()), [p.communicate() for p in procs.values()]
                assert time.time() < deadline, "the promotions never waited on the advisory lock"
                time.sleep(0.5)
            assert registry.resolve_alias("race", "champion") == "1"  # neither got past the lock
        results = {v: (p.wait(300), p.communicate()) for v, p in procs.items()}
        winners = [v for v, (rc, _) in results.items() if rc == 0]
        losers = [v for v, (rc, _) in results.items() if rc == 2]
        assert len(winners) == 1 and len(losers) == 1, results
        assert f"moved from v1 to v{winners[0]}" in results[losers[0]][1][0]
        assert registry.resolve_alias("race", "champion") == winners[0]
        log = registry.alias_log(client, "race")
        assert [(e["version"], e["previous"]) for e in log] == [("1", None), (winners[0], "1")]
        assert registry.PENDING_TAG not in client.get_registered_model("race").tags
    finally:
        mlflow.set_tracking_uri(previous_uri)
        registry.set_registry_lock(None)
