"""Serving under load and chaos on loopback: a fixed arrival rate (open loop) against the mixrec Ray Serve app.

In one run, on one trained model version (1 champion arm, 2 ranker replicas, 2 splitter replicas):

1. ``baseline``: ``--base-rate`` requests/s (light load) for ``--base-seconds``: the p50 the others are read against.
2. ``fixed rate``: ``--rate`` requests/s for ``--seconds`` (60 s in the issue): p50/p99, failed requests.
3. ``splitter kill``: ``--rate`` for ``--kill-seconds``; one of the two splitter replicas is killed a third of
   the way in: failed share, seconds until Serve runs two again.
4. ``overload``: the app redeployed with one in-flight and one queued request per ranker, ``--overload-rate``
   requests/s for 10 s: the share answered 503 (with Retry-After) and the slowest 503, never a hang.

Latency counts from each request's scheduled send time (no coordinated omission), see
:mod:`mixrec.serving.loadgen`.

    .venv/bin/python bench/serving_load.py                     # trains a small model in a temp workspace
    .venv/bin/python bench/serving_load.py --workspace WS      # reuse a workspace with a registered model
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serving_latency import free_port  # noqa: E402 (bench/ is no package)

CANDIDATES = 50


def body(i: int) -> dict:
    return {"user_id": (i * 7919) % 1000, "items": list(range(1 + i % 50, 1 + i % 50 + CANDIDATES)),
            "context": {"device": i % 3, "hour": i % 24}}


def run(name: str, url: str, rate: float, seconds: float, during=None) -> dict:
    from mixrec.serving.loadgen import fixed_rate

    if during:
        threading.Thread(target=during, daemon=True).start()
    result = asyncio.run(fixed_rate(url, rate, seconds, body))
    row = {"phase": name, **result.summary(), "errors": result.errors, "loadavg": os.getloadavg()}
    print(json.dumps(row), flush=True)
    return row


def kill_a_splitter_replica(after_s: float, out: dict) -> None:
    """Kill one splitter replica ``after_s`` seconds in; record how long until two run again."""
    import ray
    from ray import serve

    time.sleep(after_s)
    def splitters() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::mixrec#Splitter#")}

    names = splitters()
    ray.kill(ray.get_actor(sorted(names)[0], namespace="serve"), no_restart=True)
    killed = time.perf_counter()
    while time.perf_counter() - killed < 120:
        status = serve.status().applications["mixrec"].deployments["Splitter"]
        if status.replica_states.get("RUNNING", 0) == 2 and splitters() - names:  # a new replica runs
            out["recovered_after_s"] = round(time.perf_counter() - killed, 2)
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, help="a workspace with a registered model (default: train one)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=30.0, help="requests/s of the fixed-rate and kill phases")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--base-rate", type=float, default=5.0)
    parser.add_argument("--base-seconds", type=float, default=20.0)
    parser.add_argument("--kill-seconds", type=float, default=30.0)
    parser.add_argument("--overload-rate", type=float, default=200.0)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mixrec.pipelines.config import parse_config
    from mixrec.pipelines.run import run_pipeline
    from mixrec.pipelines.runtime import init_ray
    from mixrec.serving.server import deploy, start_serving, stop_serving

    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="mixrec-bench-"))
    serve = {"port": free_port(), "arms": {"champion": 1.0}, "ranker_replicas": 2, "max_candidates": CANDIDATES}
    base = {"workspace": str(workspace), "serve": serve}
    init_ray(num_cpus=4)
    if args.workspace is None:
        run_pipeline(parse_config({**base, "data": {"num_events": args.events, "num_users": 1000, "num_items": 1000,
                                                    "days": 7}, "train": {"epochs": 1}}), fresh=True,
                     progress=lambda _: None)
    url = start_serving(parse_config(base))
    rows = []
    try:
        run("warm-up", url, args.base_rate, 5)
        rows.append(run("baseline", url, args.base_rate, args.base_seconds))
        rows.append(run("fixed rate", url, args.rate, args.seconds))
        recovery: dict = {}
        rows.append(run("splitter kill", url, args.rate, args.kill_seconds,
                        during=lambda: kill_a_splitter_replica(args.kill_seconds / 3, recovery)) | recovery)
        deploy(parse_config({**base, "serve": {**serve, "max_ongoing_requests": 1, "max_queued_requests": 1}}))
        rows.append(run("overload", url, args.overload_rate, 10))
    finally:
        stop_serving()
    p50 = rows[0]["p50_ms"]
    for row in rows:
        row["p50_vs_baseline"] = round(row["p50_ms"] / p50, 2)
    print(json.dumps([{k: r.get(k) for k in ("phase", "rate", "sent", "failed", "p50_ms", "p99_ms", "p50_vs_baseline",
                                             "recovered_after_s")} for r in rows], indent=1))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
