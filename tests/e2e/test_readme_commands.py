"""The README's commands, run as written (with smaller sizes where the README shows the flags), so it stays true.

Runs first in the session (see tests/conftest.py), before the in-process Ray instance exists, because each
command starts a Ray instance of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MIXREC = str(Path(sys.executable).with_name("mixrec"))


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^(\.venv/bin/mixrec [^#\n]*?|make \w+)\s*(?:#.*)?$", text, flags=re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("mixrec_home")
    return {**os.environ, "MIXREC_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def start(cmd: list[str], env: dict) -> tuple[list[str], subprocess.Popen]:
    """A command started in the background (independent commands run at once: each spends seconds starting)."""
    return cmd, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(started: tuple[list[str], subprocess.Popen], timeout: int = 600) -> subprocess.CompletedProcess:
    """Waits for a command from :func:`start`; it must exit 0."""
    cmd, popen = started
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        raise
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return finish(start(cmd, env), timeout)


def test_readme_lists_the_commands_this_test_runs():
    cmds = readme_commands()
    for expected in ("make demo", "make test", ".venv/bin/mixrec demo", ".venv/bin/mixrec run configs/demo.yaml",
                     ".venv/bin/mixrec serve", ".venv/bin/mixrec query", ".venv/bin/mixrec query --file configs/requests.jsonl",
                     ".venv/bin/mixrec ab set-weights champion=0.9 challenger=0.1", ".venv/bin/mixrec promote 2",
                     ".venv/bin/mixrec promote 2 --force", ".venv/bin/mixrec rollback",
                     ".venv/bin/mixrec abtest simulate --url", ".venv/bin/mixrec promote 2 --require-ab",
                     ".venv/bin/mixrec models", ".venv/bin/mixrec versions", ".venv/bin/mixrec ui"):
        assert any(c.startswith(expected) for c in cmds), (expected, cmds)
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci, ".ci/run must call the README's test command"


def test_readme_commands_end_to_end(env, free_port):
    port = free_port()
    # 1. The demo command, smaller (the README shows DEMO_ARGS for this).
    demo = run(["make", "demo", f"DEMO_ARGS=--events 3000 --epochs 1 --port {port}"], env)
    out = demo.stdout
    assert "registered mixrec-ranker v1" in out
    assert re.search(r"user 1 -> arm champion \(mixrec-ranker v1\)", out), out[-2000:]
    assert len(re.findall(r"^\s+\d+\. item\s+\d+\s+score 0\.\d{4}$", out, flags=re.M)) == 24  # 3 users x 8 items
    assert "step seconds:" in out
    # ... and ends with where to look: the MLflow run and version (`mixrec ui`), the endpoint and its docs.
    assert re.search(r"^  MLflow run     http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}  "
                     r"\(start the UI: mixrec ui\)$", out, flags=re.M), out[-2000:]
    assert "  model version  http://127.0.0.1:5000/#/models/mixrec-ranker/versions/1\n" in out
    assert f"  endpoint       http://127.0.0.1:{port}/mixrec/rank, API docs http://127.0.0.1:{port}/mixrec/docs" in out

    # 2. `mixrec run` with the sample config (smaller data through the same config file).
    small = Path(env["MIXREC_HOME"]) / "small.yaml"
    small.write_text((REPO / "configs/demo.yaml").read_text().replace("num_events: 200000", "num_events: 3000")
                     .replace("epochs: 3", "epochs: 1"))
    registered = run([MIXREC, "run", str(small), "--json"], env)
    log = registered.stderr  # with --json, stdout holds the JSON document only and the progress goes to stderr
    assert "registered mixrec-ranker v2 (aliases: challenger)" in log
    # Progress as a log shows it (not a terminal): retrieval chunks, validated rows, one line per epoch; the
    # stack's own noise stays off without -v.
    assert re.search(r"^\s+epoch 1/1: train loss \d\.\d{4}, valid AUC \d\.\d{4}, logloss", log, re.M), log
    assert "point-in-time retrieval: 1/1 chunks" in log and re.search(r"validation: [\d,]+/[\d,]+ rows", log)
    for noise in ("Calculating Metrics", "Materializing", "constructor arguments in the object store", "CloudPickle"):
        assert noise not in registered.stdout + log, noise
    result = json.loads(registered.stdout)
    assert (result["version"], result["aliases"]) == ("2", ["challenger"]) and 0.0 < result["metrics"]["test_auc"] < 1
    run_id = result["mlflow"]["run_id"]
    assert result["mlflow"]["run_url"].endswith(f"/runs/{run_id}")

    # 3. `mixrec serve` in the background (with the Ray dashboard on loopback), 4. `mixrec query` against it.
    serve_log = Path(env["MIXREC_HOME"]) / "serve.log"
    serve = subprocess.Popen([MIXREC, "serve", "--port", str(port), "--dashboard"], cwd=REPO, env=env,
                             stdout=serve_log.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/mixrec/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert serve.poll() is None, serve_log.read_text()
            time.sleep(0.5)
        else:
            pytest.fail("mixrec serve did not become healthy in 180 s")
        # The read-only commands against the running server (and `--write-config`, which reads the registry)
        # are independent of each other: started at once, checked one by one.
        serve_yaml = Path(env["MIXREC_HOME"]) / "serve.yaml"
        started = {
            "query": start([MIXREC, "query", "--user", "17", "--items", "1,5,9,13", "--device", "1", "--hour", "20"], env),
            "write-config": start([MIXREC, "serve", "--write-config", str(serve_yaml)], env),
            # `mixrec abtest simulate --url ...` against the running server (fewer requests).
            "abtest": start([MIXREC, "abtest", "simulate", "--url", f"http://127.0.0.1:{port}/mixrec", "--requests",
                             "300"], env),
            "query --file": start([MIXREC, "query", "--file", "configs/requests.jsonl"], env),
        }
        done = {name: finish(cmd) for name, cmd in started.items()}
        body = json.loads(done["query"].stdout)
        assert body["arm"] in {"champion", "challenger"} and len(body["ranked"]) == 4
        dashboard = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+) ", serve_log.read_text())
        assert dashboard, serve_log.read_text()
        # Up on loopback, behind Ray's token auth (no token here).
        assert httpx.get(f"{dashboard.group(1)}/api/version", timeout=10).status_code in {200, 401}
        arms = httpx.get(f"http://127.0.0.1:{port}/mixrec/arms", timeout=10).json()
        assert arms["versions"] == {"champion": "1", "challenger": "2"}
        # The served application as a Ray Serve config file (`serve run`): written on serve, and on request.
        assert (Path(env["MIXREC_HOME"]) / "serve_config.yaml").exists()
        assert "import_path: mixrec.serving.app:app_builder" in serve_yaml.read_text()
        ab = done["abtest"]
        assert "300 answered, 0 failed" in ab.stdout and "SRM chi2" in ab.stdout, ab.stdout
        assert re.search(r"champion\s+v1\s+impressions\s+\d+", ab.stdout), ab.stdout
        batch = done["query --file"].stdout.splitlines()
        assert [json.loads(line)["status"] for line in batch] == [200, 200, 200]
        # 4b. Live re-weighting from another process (joins the server's Ray instance), after the A/B simulation.
        out = run([MIXREC, "ab", "set-weights", "champion=0.9", "challenger=0.1"], env).stdout
        assert "champion (v1) 90%, challenger (v2) 10%" in out or "challenger (v2) 10%, champion (v1) 90%" in out, out
        arms = httpx.get(f"http://127.0.0.1:{port}/mixrec/arms", timeout=10).json()
        assert arms["weights"] == {"challenger": 0.1, "champion": 0.9}
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)

    # 5. `mixrec promote 2` (gated: either outcome is legitimate for two tiny models, but it must evaluate),
    # `--force`, `rollback`; 6. `mixrec models` (independent of the registry: runs meanwhile).
    # (`--require-ab` runs in tests/integration/test_promotion_abtest.py.)
    models = start([MIXREC, "models"], env)
    gated = subprocess.run([MIXREC, "promote", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert "offline gate: v2 vs champion v1" in gated.stdout, gated.stdout + gated.stderr
    assert (gated.returncode, "now champion" in gated.stdout) in {(0, True), (1, False)}, gated.stdout + gated.stderr
    if gated.returncode == 1:
        assert "refused" in gated.stderr and "--force" in gated.stderr
        assert "v2 is now champion" in run([MIXREC, "promote", "2", "--force", "--reason", "hotfix"], env).stdout
    assert "v1 is champion again" in run([MIXREC, "rollback"], env).stdout
    table = finish(models).stdout
    assert "rankmixer" in table and "dnn" in table

    # 8. `mixrec ui` (started now, read-only on the store: it comes up while 7. `mixrec versions` runs).
    ui_port = free_port()
    ui = subprocess.Popen([MIXREC, "ui", "--port", str(ui_port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # 7. `mixrec versions`: the registry at a glance, after the gate evaluated v2.
        v2, v1 = json.loads(run([MIXREC, "versions", "--json"], env).stdout)
        assert (v1["version"], v1["aliases"], v2["version"]) == ("1", ["champion"], "2")
        assert v2["gate"]["offline_passed"] in {"True", "False"} and v2["gate"]["against_champion"] == "1"
        assert v2["run_id"] == run_id and v2["test_metrics"]["test_auc"] == pytest.approx(result["metrics"]["test_auc"])
        assert len(v2["lineage"]["dataset_sha256"]) == 64 and v2["lineage"]["config"]["data"]["num_events"] == 3000

        # 8. `mixrec ui`: the MLflow UI on the workspace's store, on loopback; it knows the run `mixrec run` printed.
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{ui_port}/api/2.0/mlflow/runs/get", params={"run_id": run_id},
                                   timeout=5)
            except httpx.HTTPError:
                assert ui.poll() is None, "mixrec ui exited"
                time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, answer
        assert answer.json()["run"]["data"]["metrics"]
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


def test_cli_rejects_bad_input_with_clear_errors(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  num_workers: 0\nmodel:\n  nme: x\n")
    # Three independent refusals, started at once (each is mostly interpreter start-up).
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in ([MIXREC, "run", str(bad)],
                         [MIXREC, "query", "--user", "1", "--items", " , ", "--url", "http://127.0.0.1:9"],
                         [MIXREC, "query", "--user", "1", "--items", "1,2", "--url", "http://127.0.0.1:9"])]
    stderrs = [p.communicate(timeout=300)[1] for p in procs]
    (code, stderr), (code_items, stderr_items), (code_reach, stderr_reach) = (
        (p.returncode, err) for p, err in zip(procs, stderrs, strict=True))
    assert code == 2
    assert "train.num_workers" in stderr and "model.nme" in stderr
    assert code_items == 2 and "--items must name at least one item id" in stderr_items
    assert code_reach == 3 and stderr_reach.startswith("error: cannot reach http://127.0.0.1:9"), stderr_reach
