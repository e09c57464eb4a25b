"""Does Ray Serve's direct ingress (Ray 2.60, ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: the ingress replica serves
HTTP itself, no proxy actor) remove the proxy hop's cost? Empty apps, with and without it, in one run.

    nice -n -20 .venv/bin/python bench/serve_direct_ingress.py --repeats 2

Each case is a fresh Ray instance in a child process (the flag is read when Serve starts): an ingress that
parses a 200-candidate body and answers 0.5 per item (1 hop), or forwards to a second deployment that does so
(2 hops); 300 sequential requests after 30 warm-up, p50 and p99 in ms.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` type.

import argparse
import json
import os
import subprocess
import sys
import time


def child(hops: int, port: int, requests: int) -> None:
    import numpy as np
    import ray
    import requests as http
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    api = FastAPI()

    def answer(user_id, items) -> dict:
        return {"user_id": user_id, "ranked": [{"item_id": i, "score": 0.5} for i in items]}

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Inner:
        async def rank(self, user_id, items):
            return answer(user_id, items)

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class Outer:
        def __init__(self, inner=None):
            self.inner = inner

        @api.post("/rank")
        async def rank(self, request: Request):
            body = json.loads(await request.body())
            out = (answer(body["user_id"], body["items"]) if self.inner is None
                   else await self.inner.rank.remote(body["user_id"], body["items"]))
            return Response(json.dumps(out), media_type="application/json")

    serve.run(Outer.bind(Inner.bind()) if hops == 2 else Outer.bind(), route_prefix="/x", name="x")
    body, headers = json.dumps({"user_id": 1, "items": list(range(200))}), {"content-type": "application/json"}
    session, url = http.Session(), f"http://127.0.0.1:{port}/x/rank"
    for _ in range(30):
        assert session.post(url, data=body, headers=headers).status_code == 200
    seconds = []
    for _ in range(requests):
        t0 = time.perf_counter()
        assert session.post(url, data=body, headers=headers).status_code == 200
        seconds.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"hops": hops, "direct_ingress": os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1",
                                  "p50_ms": 1000 * float(np.median(seconds)),
                                  "p99_ms": 1000 * float(np.percentile(seconds, 99))}), flush=True)
    serve.shutdown()
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: hops of the case to run
    args = p.parse_args()
    if args.child:
        child(args.child, args.port, args.requests)
        return
    print("| hops | direct ingress | p50 ms | p99 ms |\n|---:|---|---:|---:|")
    for _ in range(args.repeats):
        for direct in ("0", "1"):
            for hops in (1, 2):
                env = {**os.environ, "RAY_SERVE_ENABLE_DIRECT_INGRESS": direct}
                done = subprocess.run([sys.executable, __file__, "--child", str(hops), "--port", str(args.port),
                                       "--requests", str(args.requests)], env=env, capture_output=True, text=True,
                                      timeout=600)
                lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if not lines:
                    sys.exit(f"case hops={hops} direct={direct} failed:\n{done.stderr[-3000:]}")
                r = json.loads(lines[0][len("RESULT "):])
                print(f"| {hops} | {'on' if r['direct_ingress'] else 'off'} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
