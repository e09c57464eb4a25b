"""Serve applications cannot take each other down: a second application (its own name and route prefix) starts
on the running HTTP proxy and is stopped again while the session's shared app keeps answering 200."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from mixrec.pipelines.config import parse_config
from mixrec.pipelines.registry import CHAMPION

pytestmark = pytest.mark.integration

BODY = {"user_id": 3, "items": [1, 2, 3], "context": {"device": 1, "hour": 9}}


class Probe:
    """Sends /rank to one URL in a loop on a thread until stopped; records every status (0: transport error)."""

    def __init__(self, url: str):
        self.url, self.statuses = url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    self.statuses.append(client.post("/rank", json=BODY).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)

    def wait_for_more(self, n: int, timeout: float = 60) -> None:
        deadline, target = time.time() + timeout, len(self.statuses) + n
        while len(self.statuses) < target and time.time() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def test_a_second_app_starts_and_stops_while_the_first_keeps_answering(served, free_port):
    from ray import serve

    from mixrec.serving.server import start_serving, stop_serving

    data = served["cfg"].to_dict()
    data["serve"].update(app_name="mixrec-second", route_prefix="/second", port=free_port(),
                         arms={CHAMPION: 1.0}, ranker_replicas=1)
    cfg = parse_config(data)
    state = served["first"].workspace.serve_state
    recorded = state.read_text()
    first = urlsplit(served["url"])
    try:
        with Probe(served["url"]) as probe:
            url = start_serving(cfg)
            # One HTTP proxy per Ray instance: the second app is reached on the port it really listens on.
            assert url == f"{first.scheme}://{first.netloc}/second"
            answer = httpx.post(f"{url}/rank", json=BODY, timeout=60)
            assert answer.status_code == 200 and answer.json()["arm"] == CHAMPION, answer.text
            assert {"mixrec", "mixrec-second"} <= set(serve.status().applications)
            stop_serving(cfg)
            assert set(serve.status().applications) == {"mixrec"}
            assert httpx.post(f"{url}/rank", json=BODY, timeout=60).status_code == 404
            probe.wait_for_more(5)
    finally:
        stop_serving(cfg)
        state.write_text(recorded)  # the shared app's serve.json, which the second start overwrote
    assert len(probe.statuses) > 5 and set(probe.statuses) == {200}, probe.statuses
    assert served["client"].post("/rank", json=BODY).status_code == 200


def test_the_written_serve_config_runs_with_rays_own_serve_run(served, tmp_path):
    """`mixrec serve --write-config FILE` then Ray Serve's own `serve run FILE` (its CLI, in this process so it
    joins the session's Ray): the application from the file answers a ranking request; the shared app keeps its."""
    import yaml
    from click.testing import CliRunner as ClickRunner
    from ray import serve
    from ray.serve.scripts import run as serve_run
    from typer.testing import CliRunner

    from mixrec.cli import app
    from mixrec.pipelines.registry import resolve_alias

    data = served["cfg"].to_dict()
    data["serve"].update(app_name="mixrec-file", route_prefix="/file", arms={CHAMPION: 1.0}, ranker_replicas=1)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(data))
    path = tmp_path / "serve.yaml"
    written = CliRunner().invoke(app, ["serve", "-c", str(tmp_path / "pipeline.yaml"), "--write-config", str(path)])
    assert written.exit_code == 0, written.output
    champion = resolve_alias("mixrec-ranker", CHAMPION)
    assert yaml.safe_load(path.read_text())["applications"][0]["args"]["arms"] == {CHAMPION: champion}
    first = urlsplit(served["url"])
    try:
        ran = ClickRunner().invoke(serve_run, [str(path), "--non-blocking"])
        assert ran.exit_code == 0, ran.output
        deadline = time.time() + 300
        while (status := serve.status().applications["mixrec-file"]).status not in ("RUNNING", "DEPLOY_FAILED") \
                and time.time() < deadline:
            time.sleep(0.5)
        assert status.status == "RUNNING", status.message
        answer = httpx.post(f"{first.scheme}://{first.netloc}/file/rank", json=BODY, timeout=60)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["arm"], answer.json()["model_version"]) == (CHAMPION, champion)
        assert served["client"].post("/rank", json=BODY).status_code == 200
    finally:
        if "mixrec-file" in serve.status().applications:
            serve.delete("mixrec-file")
    assert "mixrec" in serve.status().applications


def test_a_new_splitter_takes_traffic_only_once_its_rankers_answer(served, tmp_path):
    """The splitter's constructor waits until every arm's ranker answers ``ready()`` (a redeploy must not route
    to rankers still loading their model). Here the one ranker answers only when the test opens a gate: until
    then the splitter replica stays STARTING, `serve.run` has not returned and a /rank request sent meanwhile
    waits at Serve's proxy; once the gate opens, the application runs and that request is answered 200."""
    import asyncio
    import threading
    from dataclasses import replace

    from ray import serve

    from mixrec.pipelines.workspace import Workspace
    from mixrec.serving.ingress import Splitter
    from mixrec.serving.server import resolve_serve

    gate, asked = tmp_path / "gate-open", tmp_path / "ready-asked"

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class GatedRanker:
        """Answers ``ready()`` once the gate file exists; ranks by giving every candidate score 0.5, and says in
        ``model_version`` whether the gate was open when it was asked to rank."""

        async def ready(self) -> str:
            asked.touch()
            while not gate.exists():
                await asyncio.sleep(0.05)
            return "gated"

        async def rank(self, user_id, items, context) -> dict:
            version = "gate-open" if gate.exists() else "gate-closed"
            return {"user_id": user_id, "arm": CHAMPION, "model_name": "gated", "model_version": version,
                    "ranked": [{"item_id": i, "score": 0.5} for i in items]}

    cfg = served["cfg"]
    plan = replace(resolve_serve(cfg, Workspace.resolve(cfg.workspace)).splitter_view(), arms={CHAMPION: "gated"})
    app = Splitter.options(user_config={"weights": {CHAMPION: 1.0}, "token_sha256": None}).bind(
        plan, {}, **{CHAMPION: GatedRanker.bind()})
    first = urlsplit(served["url"])
    url = f"{first.scheme}://{first.netloc}/gated/rank"
    errors: list[BaseException] = []
    waiting: threading.Thread | None = None

    def run() -> None:
        try:
            serve.run(app, name="mixrec-gated", route_prefix="/gated")
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    deploying = threading.Thread(target=run, daemon=True)
    try:
        deploying.start()
        deadline = time.time() + 300
        while not asked.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert asked.exists(), "the splitter never asked its ranker whether it is ready"
        # The splitter is inside its constructor, waiting on the gate: not serving yet.
        splitter = serve.status().applications["mixrec-gated"].deployments["Splitter"]
        assert "RUNNING" not in splitter.replica_states, splitter.replica_states
        assert deploying.is_alive() and not errors, errors
        early: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: early.append(httpx.post(url, json=BODY, timeout=300)), daemon=True)
        waiting.start()
        gate.touch()
        deploying.join(300)
        assert not deploying.is_alive() and not errors, errors
        assert serve.status().applications["mixrec-gated"].status == "RUNNING"
        waiting.join(300)
        assert [a.status_code for a in early] == [200], [a.text for a in early]
        assert early[0].json()["model_version"] == "gate-open"  # it reached the ranker only after the gate opened
        answer = httpx.post(url, json=BODY, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "gate-open"
        assert [r["item_id"] for r in answer.json()["ranked"]] == BODY["items"]
    finally:
        gate.touch()
        deploying.join(300)
        if waiting is not None:
            waiting.join(300)
        if "mixrec-gated" in serve.status().applications:
            serve.delete("mixrec-gated")
    assert served["client"].post("/rank", json=BODY).status_code == 200
