"""Serving latency: ranking 200 candidates over HTTP (features included) against the bare in-process model.

In one run, on one trained model version:

1. ``in-process``: ``MixrecRanker.score`` (preprocessing + forward) on a 200-row frame whose features are
   already in memory; the floor any server adds to.
2. ``serve cached``: the mixrec Ray Serve app (proxy -> splitter -> ranker), item features cached in the
   replica, user features cached in the replica after their first Feast read (the defaults).
3. ``serve uncached``: the same app with ``serve.item_cache: false, user_cache_ttl_s: 0`` (every feature from
   Feast per request).
4. ``fastapi+uvicorn``: a plain one-process FastAPI app loading the same model with the same feature path
   (cached item table, the same user cache), no Ray; what a user might pick instead.

Then ``stages``: each step of the ranker's and the splitter's code, timed in this process on the same model
and request (median of 200), so that serve cached p50 minus their sum is what HTTP and the two Ray hops cost.

Latency: sequential requests (one in flight) -> p50/p99. Throughput: ``--concurrency`` clients for
``--seconds`` -> QPS. Goal from issue 7: serve-cached p50 <= 1.3 x in-process p50 + 3 ms.

    .venv/bin/python bench/serving_latency.py                      # trains a small model in a temp workspace
    .venv/bin/python bench/serving_latency.py --workspace WS        # reuse a workspace with a registered model
"""


import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

CANDIDATES = 200


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def sequential_latency(url: str, n: int, users: np.ndarray, items: list[int]) -> dict[str, float]:
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n + 20):
            t0 = time.perf_counter()
            r = client.post("/rank", json={"user_id": int(users[i % len(users)]), "items": items,
                                           "context": {"device": 1, "hour": 12}})
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
            if i >= 20:  # warm-up
                times.append(time.perf_counter() - t0)
    return percentiles(times)


def throughput(url: str, seconds: float, concurrency: int, users: np.ndarray, items: list[int]) -> dict[str, float]:
    async def main() -> tuple[int, int]:
        ok = failed = 0
        stop = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal ok, failed
            i = w
            while time.perf_counter() < stop:
                r = await client.post("/rank", json={"user_id": int(users[i % len(users)]), "items": items})
                ok += r.status_code == 200
                failed += r.status_code != 200
                i += concurrency

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return ok, failed

    ok, failed = asyncio.run(main())
    return {"qps": ok / seconds, "failed": failed}


def measure(name: str, url: str, args, users: np.ndarray, items: list[int]) -> dict:
    row = {"path": name, **sequential_latency(url, args.requests, users, items)}
    row.update(throughput(url, args.seconds, args.concurrency, users, items))
    print(json.dumps(row), flush=True)
    return row


def bare_in_process(cfg, ws, version: str, users: np.ndarray, items: list[int], n: int) -> dict:
    """Preprocess + forward of 200 candidates on features already in memory (fetched once, before timing)."""
    from mixrec.features import feast_repo
    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.pipelines.pyfunc import load_ranker
    from mixrec.serving.features import load_item_table, online_matrix, request_frame

    ranker = load_ranker(cfg.registry.model_name, version)
    store = feast_repo.open_store(ws.feast_repo)
    table = load_item_table(store, schema, ws.materialized_marker)
    item_ids = np.asarray(items, dtype=np.int64)
    item_features = table.lookup(item_ids)
    user_features = online_matrix(store, schema, "user", users)
    frames = [request_frame(schema, users[i:i + 1], np.array([CANDIDATES]), item_ids, [{"device": 1, "hour": 12}],
                            user_features[i:i + 1], item_features) for i in range(len(users))]
    times = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        ranker.score(frames[i % len(frames)])
        if i >= 20:
            times.append(time.perf_counter() - t0)
    row = {"path": "in-process (features in memory)", **percentiles(times), "qps": 1.0 / np.median(times),
           "failed": 0}
    print(json.dumps(row), flush=True)
    return row


def stages(cfg, ws, version: str, users: np.ndarray, items: list[int], n: int = 200) -> dict[str, float]:
    """Median ms of each step the served path runs for one 200-candidate request, in this process: the
    splitter's (parse + checks, arm, JSON answer) and the ranker's (user features, items, frame, preprocessing,
    forward, answer). What serve cached p50 adds beyond their sum is HTTP, the proxy and the two Ray hops."""
    import json as jsonlib

    import torch

    from mixrec.features import feast_repo
    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.models.batch import Batch
    from mixrec.pipelines.config import ServeConfig
    from mixrec.pipelines.pyfunc import load_ranker
    from mixrec.serving.body import parse_rank_request
    from mixrec.serving.features import CachedUserFeatures, load_item_table, online_matrix, request_frame
    from mixrec.serving.splitter import assign_arm

    ranker = load_ranker(cfg.registry.model_name, version)
    store = feast_repo.open_store(ws.feast_repo)
    table = load_item_table(store, schema, ws.materialized_marker)
    s = ServeConfig()
    cache = CachedUserFeatures(lambda keys: online_matrix(store, schema, "user", keys), ws.materialized_marker,
                               s.user_cache_ttl_s, s.user_cache_size)
    raw = jsonlib.dumps({"user_id": int(users[0]), "items": items, "context": {"device": 1, "hour": 12}}).encode()
    out: dict[str, float] = {}

    def timed(name: str, fn):
        result, times = None, []
        for i in range(n + 10):
            t0 = time.perf_counter()
            result = fn(i)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times) * 1000)
        return result

    body = timed("splitter: parse body (JSON + pydantic)", lambda i: parse_rank_request(raw, "application/json"))
    timed("splitter: assign arm", lambda i: assign_arm(body.user_id, {"champion": 1.0}, s.salt))
    timed("ranker: user features, Feast read (uncached)", lambda i: online_matrix(store, schema, "user", users[i % len(users):][:1]))
    uf = timed("ranker: user features, cache hit", lambda i: cache.lookup(users[:1]))
    ids = timed("ranker: item ids -> key type", lambda i: schema.key_array(schema.item_key, np.asarray(items, dtype=object)))
    itf = timed("ranker: item features, cached table", lambda i: table.lookup(ids))
    frame = timed("ranker: request frame", lambda i: request_frame(schema, users[:1], np.array([len(items)]), ids,
                                                                  [{"device": 1, "hour": 12}], uf, itf))
    arrays = timed("ranker: preprocessing (in the floor)", lambda i: ranker.preprocessor.transform(frame))

    def forward(i):
        with torch.no_grad():
            batch = Batch.from_arrays(arrays)
            return torch.sigmoid(ranker.model(batch.categorical, batch.dense)).numpy()

    scores = timed("ranker: forward (in the floor)", forward)

    def answer(i):
        order = np.argsort(-scores, kind="stable")
        return {"user_id": body.user_id, "arm": "champion", "model_name": cfg.registry.model_name,
                "model_version": version, "ranked": [{"item_id": a, "score": b} for a, b in
                                                     zip(ids[order].tolist(), scores[order].tolist(), strict=True)]}

    result = timed("ranker: answer dict", answer)
    timed("splitter: answer JSON", lambda i: jsonlib.dumps(result, separators=(",", ":")).encode())
    print(json.dumps({"stages_ms": out}), flush=True)
    return out


def empty_serve_hops(port: int, args, users: np.ndarray, items: list[int]) -> list[dict]:
    """The same requests to two Serve apps that do no work (parse the body, answer every item with score 0.5):
    proxy -> ingress, and proxy -> ingress -> a second deployment (the splitter -> ranker hop); the replicas
    get the mixrec app's logical CPUs. What Ray Serve itself costs per request on this host, in this run."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Inner:
        async def rank(self, user_id, item_ids, context) -> dict:
            return {"user_id": user_id, "ranked": [{"item_id": i, "score": 0.5} for i in item_ids]}

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class Ingress:
        def __init__(self, inner=None):
            self.inner = inner

        @api.post("/rank")
        async def rank(self, request: Request) -> Response:
            body = json.loads(await request.body())
            if self.inner is None:
                answer = {"user_id": body["user_id"], "ranked": [{"item_id": i, "score": 0.5} for i in body["items"]]}
            else:
                answer = await self.inner.rank.remote(body["user_id"], body["items"], body.get("context", {}))
            return Response(json.dumps(answer), media_type="application/json")

    rows = []
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for name, app in (("empty Serve app: proxy -> ingress", Ingress.bind()),
                          ("empty Serve app: proxy -> ingress -> 2nd deployment", Ingress.bind(Inner.bind()))):
            prefix = "/hop1" if "2nd" not in name else "/hop2"
            serve.run(app, name=prefix[1:], route_prefix=prefix)
            rows.append(measure(name, f"http://127.0.0.1:{port}{prefix}", args, users, items))
    finally:
        serve.shutdown()
    return rows


# --- the plain FastAPI + uvicorn baseline (run as a subprocess of this script) -------------------------------

def plain_app(workspace: str, model_name: str, version: str):
    """(This module has no ``from __future__ import annotations``: FastAPI must see RankRequest itself.)"""
    from fastapi import FastAPI

    from mixrec.features import feast_repo
    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.pipelines.config import ServeConfig
    from mixrec.pipelines.pyfunc import load_ranker
    from mixrec.pipelines.registry import setup_tracking
    from mixrec.pipelines.workspace import Workspace
    from mixrec.serving.features import CachedUserFeatures, load_item_table, online_matrix, request_frame
    from mixrec.serving.schemas import RankRequest

    ws = Workspace.resolve(workspace)
    setup_tracking(None, "mixrec", ws)
    ranker = load_ranker(model_name, version)
    store = feast_repo.open_store(ws.feast_repo)
    table = load_item_table(store, schema, ws.materialized_marker)
    defaults = ServeConfig()
    user_features = CachedUserFeatures(lambda keys: online_matrix(store, schema, "user", keys), ws.materialized_marker,
                                       defaults.user_cache_ttl_s, defaults.user_cache_size)
    app = FastAPI()

    @app.post("/rank")
    def rank(body: RankRequest) -> dict:
        items = np.asarray(body.items, dtype=np.int64)
        users = np.array([body.user_id], dtype=np.int64)
        frame = request_frame(schema, users, np.array([len(items)]), items, [body.context],
                              user_features.lookup(users), table.lookup(items))
        scores = ranker.score(frame)
        order = np.argsort(-scores, kind="stable")
        return {"user_id": body.user_id, "model_version": version,
                "ranked": [{"item_id": i, "score": s} for i, s in zip(items[order].tolist(), scores[order].tolist(), strict=True)]}

    return app


def start_plain_server(workspace: Path, model_name: str, version: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--plain-server", str(workspace), model_name, version, str(port)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the plain FastAPI server did not start in 120 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-server":
        import uvicorn

        workspace, model_name, version, port = sys.argv[2:6]
        uvicorn.run(plain_app(workspace, model_name, version), host="127.0.0.1", port=int(port), log_level="warning")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, help="a workspace with a registered model (default: train one)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per path (latency)")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of the throughput phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mixrec.pipelines.config import parse_config
    from mixrec.pipelines.registry import resolve_alias, setup_tracking
    from mixrec.pipelines.run import run_pipeline
    from mixrec.pipelines.runtime import init_ray
    from mixrec.pipelines.workspace import Workspace
    from mixrec.serving.server import start_serving, stop_serving

    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="mixrec-bench-"))
    base = {"workspace": str(workspace), "serve": {"port": free_port(), "arms": {"champion": 1.0}}}
    init_ray(num_cpus=4)
    if args.workspace is None:
        run_pipeline(parse_config({**base, "data": {"num_events": args.events, "num_users": 1000, "num_items": 1000,
                                                    "days": 7}, "train": {"epochs": 1}}), fresh=True,
                     progress=lambda _: None)
    cfg = parse_config(base)
    ws = Workspace.resolve(cfg.workspace)
    setup_tracking(None, cfg.registry.experiment, ws)
    version = resolve_alias(cfg.registry.model_name, "champion")
    rng = np.random.default_rng(0)
    users = rng.integers(0, 1000, size=64)
    items = rng.choice(1000, size=CANDIDATES, replace=False).tolist()

    rows = [bare_in_process(cfg, ws, version, users, items, args.requests)]
    for name, cache in (("serve cached (HTTP, features included)", True), ("serve uncached (all features from Feast)", False)):
        serve = {**base["serve"], "item_cache": cache, **({} if cache else {"user_cache_ttl_s": 0.0})}
        url = start_serving(parse_config({**base, "serve": serve}))
        try:
            rows.append(measure(name, url, args, users, items))
        finally:
            stop_serving()
    try:
        rows.extend(empty_serve_hops(free_port(), args, users, items))
    except Exception as err:  # the main rows stand without these
        print(f"empty Serve apps not measured: {type(err).__name__}: {err}", flush=True)
    port = free_port()
    proc = start_plain_server(workspace, cfg.registry.model_name, version, port)
    try:
        rows.append(measure("fastapi+uvicorn (1 process, same features)", f"http://127.0.0.1:{port}", args, users, items))
    finally:
        proc.terminate()
        proc.wait(30)
    steps = stages(cfg, ws, version, users, items)
    bare = rows[0]["p50_ms"]
    beyond = {k: v for k, v in steps.items() if "(in the floor)" not in k and "uncached" not in k}
    steps["HTTP, proxy and Ray hops (serve cached p50 - floor - the steps above)"] = (
        rows[1]["p50_ms"] - bare - sum(beyond.values()))
    goal = 1.3 * bare + 3
    print(f"serve cached p50 {rows[1]['p50_ms']:.2f} ms vs goal 1.3 x {bare:.2f} + 3 = {goal:.2f} ms: "
          f"{'met' if rows[1]['p50_ms'] <= goal else 'not met'}; load average {os.getloadavg()}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "stages_ms": steps, "goal_ms": goal,
                                        "loadavg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
