"""A real two-node Ray cluster on this host (head + worker started with `ray start`), token auth on:
`mixrec submit` ships the code as a Ray Job, training uses workers on both nodes, the model gets registered;
a client with a wrong token is refused. The cluster is stopped by the process groups this test started."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGKILL)  # raylet/gcs ignore SIGTERM for long; these are our own groups
        except ProcessLookupError:
            pass
        p.wait(30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, free_port):
    tmp = tmp_path_factory.mktemp("cluster")
    token_file = tmp / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    # Short temp dirs (AF_UNIX socket paths are limited to 107 bytes), one per node: two nodes on one host
    # must not share runtime_resources, or one node's cache cleanup deletes the other's job files.
    head_tmp, worker_tmp = (tempfile.mkdtemp(prefix=p, dir="/tmp") for p in ("rh", "rw"))
    common = ["--num-cpus=2", "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats"]

    def own_ports() -> list[str]:
        # Each node's agents on free ports: the defaults (e.g. 52365 for the job agent) collide with any
        # other Ray instance on this host, and a head without its job agent refuses every submission.
        return [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                       "runtime-env-agent-port", "metrics-export-port")]
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for name, args in (("head", ["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
                                     f"--dashboard-port={dash_port}", f"--temp-dir={head_tmp}"]),
                           ("worker", [f"--address=127.0.0.1:{gcs_port}", f"--temp-dir={worker_tmp}"])):
            log = open(tmp / f"{name}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen([str(BIN / "ray"), "start", *args, *common, *own_ports()], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            if name == "head":
                _wait_for(lambda: httpx.get(f"http://127.0.0.1:{dash_port}/api/version", timeout=2).status_code < 500,
                          120, "dashboard", procs[0], tmp / "head.log")
        address = f"http://127.0.0.1:{dash_port}"
        _wait_for(lambda: _alive_nodes(f"127.0.0.1:{gcs_port}", env) == 2, 120, "second node", procs[1], tmp / "worker.log")
        yield {"address": address, "env": env, "tmp": tmp}
    finally:
        _stop(procs)
        for log in logs:
            log.close()
        for d in (head_tmp, worker_tmp):
            shutil.rmtree(d, ignore_errors=True)


def _alive_nodes(gcs_address: str, env: dict) -> int:
    r = subprocess.run([str(BIN / "ray"), "status", f"--address={gcs_address}"], env=env, capture_output=True, text=True)
    return r.stdout.count(" node_")


def _wait_for(check, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc.poll() is not None:
            pytest.fail(f"ray start for the {what} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"{what} not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_submitted_pipeline_trains_on_both_nodes_and_registers(cluster):
    tmp = cluster["tmp"]
    config = tmp / "job.yaml"
    config.write_text(yaml.safe_dump({
        "workspace": str(tmp / "workspace"),  # one host: this path is shared storage for every node
        "data": {"num_events": 3000, "num_users": 150, "num_items": 80, "days": 3, "seed": 5},
        "model": {"name": "dnn"},
        "train": {"num_workers": 2, "cpus_per_worker": 0.5, "epochs": 1, "placement_strategy": "STRICT_SPREAD"},
        "registry": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "model_name": "cluster-ranker"},
    }))
    proc = subprocess.run([str(BIN / "mixrec"), "submit", str(config), "--address", cluster["address"], "--wait"],
                          env=cluster["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    # Three independent read-only commands, started at once (each is mostly interpreter start-up).
    status, listed, logs = _mixrec_at_once(cluster, ("jobs", "status", job_id), ("jobs", "list"),
                                           ("jobs", "logs", job_id))
    assert status.stdout.strip() == "SUCCEEDED"
    assert job_id in listed.stdout
    assert "registered cluster-ranker v1" in logs.stdout

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    version = client.get_model_version_by_alias("cluster-ranker", "champion")
    run = client.get_run(version.run_id)
    assert run.data.metrics["num_nodes"] == 2, run.data.metrics


def _mixrec(cluster, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "mixrec"), *args, "--address", cluster["address"]], env=cluster["env"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _mixrec_at_once(cluster, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """`mixrec ARGS --address ...` for each of ``commands``, run concurrently; each must exit 0."""
    cmds = [[str(BIN / "mixrec"), *args, "--address", cluster["address"]] for args in commands]
    procs = [subprocess.Popen(cmd, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in cmds]
    done = []
    for cmd, p in zip(cmds, procs, strict=True):
        try:
            stdout, stderr = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        assert p.returncode == 0, stdout + stderr
        done.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return done


def test_a_running_job_can_be_stopped(cluster):
    config = cluster["tmp"] / "long.yaml"
    config.write_text(yaml.safe_dump({"workspace": str(cluster["tmp"] / "ws-long"), "train": {"epochs": 50},
                                      "registry": {"tracking_uri": f"sqlite:///{cluster['tmp'] / 'long.db'}"}}))
    job_id = _mixrec(cluster, "submit", str(config)).stdout.strip().splitlines()[-1]
    assert _mixrec(cluster, "jobs", "stop", job_id).stdout.strip() in {"stopped", "not running"}
    deadline = time.time() + 60
    while time.time() < deadline and _mixrec(cluster, "jobs", "status", job_id).stdout.strip() != "STOPPED":
        time.sleep(2)
    assert _mixrec(cluster, "jobs", "status", job_id).stdout.strip() == "STOPPED"


def test_wrong_token_is_refused(cluster):
    env = {**cluster["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    env.pop("RAY_AUTH_TOKEN_PATH")
    proc = subprocess.run([str(BIN / "mixrec"), "jobs", "list", "--address", cluster["address"]],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "401" in proc.stderr or "nauthorized" in proc.stderr or "token" in proc.stderr.lower(), proc.stderr[-2000:]
