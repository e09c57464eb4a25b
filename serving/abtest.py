"""A/B simulator: synthetic users send real HTTP requests to the served splitter; clicks come from the
synthetic generator's ground truth, so the truly better arm is known.

One simulated request: a user of the synthetic population (uniform over ``data.num_users``), a request
context (device, hour) and ``candidates`` random items. The splitter picks the arm, the arm's model ranks the
candidates, the user sees the top item (one impression) and clicks with the ground-truth probability
:meth:`GroundTruth.click_probability` at serving time (the last daily snapshot). The whole plan (users,
contexts, candidates, the uniform draw deciding each click) is fixed by the seed before any request is sent,
so a run is reproducible whatever order the responses come back in.

Traffic is paced (request ``i`` is sent at ``i / rate`` seconds) and bounded (at most ``concurrency`` in
flight, asyncio + httpx). Every request is appended to ``impressions.jsonl`` as it completes (failures too,
with their status and error); the analysis (:mod:`mixrec.serving.abstats`) reads that log back and counts the
answered ones as impressions.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mixrec.features.synthetic import NUM_DEVICES, NUM_HOURS, GroundTruth
from mixrec.pipelines.config import PipelineConfig, dataset_schema
from mixrec.pipelines.promotion import OnlineGate, OnlineVerdict
from mixrec.pipelines.workspace import Workspace

from . import abreport
from .abanalysis import AbAnalysis, SimulationSpec, analyse, online_gate_reasons

RETRIES_ON_503 = 3
SIMULATION_APP = "mixrec-abgate"  # the Serve application (and route prefix) simulate_served deploys


@dataclass
class RequestPlan:
    user_id: np.ndarray  # [R]
    device: np.ndarray  # [R]
    hour: np.ndarray  # [R]
    candidates: np.ndarray  # [R, K] distinct item ids per request
    click_draw: np.ndarray  # [R] uniforms: click when < p(click)


def plan_requests(truth: GroundTruth, spec: SimulationSpec) -> RequestPlan:
    rng = np.random.default_rng(spec.seed)
    r, k = spec.requests, min(spec.candidates, truth.num_items)
    # K distinct items per request: the first K of a random permutation per row (argsort of uniforms).
    candidates = np.argsort(rng.uniform(size=(r, truth.num_items)), axis=1)[:, :k]
    return RequestPlan(user_id=rng.integers(0, truth.num_users, r), device=rng.integers(0, NUM_DEVICES, r),
                       hour=rng.integers(0, NUM_HOURS, r), candidates=candidates, click_draw=rng.uniform(size=r))


def wire_ids(ids: np.ndarray, string: bool) -> list:
    """Ids as JSON values of the dataset's key type: ints, or their decimal text for a string-keyed dataset."""
    return ids.astype(str).tolist() if string else ids.astype(np.int64).tolist()


async def _send(url: str, plan: RequestPlan, spec: SimulationSpec, log_path: Path,
                string_keys: tuple[bool, bool] = (False, False)) -> int:
    """Send the plan's requests (user and item ids as strings where ``string_keys`` says so); append one JSON
    line per answered request. Returns the failed count."""
    import httpx

    failed = 0
    sem = asyncio.Semaphore(spec.concurrency)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(client, log, i: int) -> None:
        nonlocal failed
        delay = t0 + i / spec.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = {"user_id": wire_ids(plan.user_id[i:i + 1], string_keys[0])[0],
                "items": wire_ids(plan.candidates[i], string_keys[1]),
                "context": {"device": int(plan.device[i]), "hour": int(plan.hour[i])}}
        async with sem:
            for _attempt in range(RETRIES_ON_503 + 1):
                start = time.perf_counter()
                try:
                    r, error = await client.post("/rank", json=body), None
                except httpx.HTTPError as err:
                    r, error = None, f"{type(err).__name__}: {err}"
                if r is not None and r.status_code != 503:
                    break
                await asyncio.sleep(float(r.headers.get("retry-after", 0.2)) if r is not None else 0.2)
        record = {"i": i, "t": round(loop.time() - t0, 4), "user_id": int(plan.user_id[i]),
                  "device": body["context"]["device"], "hour": body["context"]["hour"],
                  "latency_ms": round(1000 * (time.perf_counter() - start), 2),
                  "status": r.status_code if r is not None else 0}
        if r is None or r.status_code != 200:
            failed += 1
            record["error"] = error or r.text[:300]  # failures stay in the log, with why
        else:
            answer = r.json()
            record.update(arm=answer["arm"], model_version=answer["model_version"],
                          item_id=answer["ranked"][0]["item_id"])  # the impression: the top-ranked item
        log.write(json.dumps(record) + "\n")

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=spec.concurrency)) as client:
        with open(log_path, "a", buffering=1) as log:
            await asyncio.gather(*(one(client, log, i) for i in range(spec.requests)))
    return failed


def read_log(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The impression log -> (answered requests in completion order, failed requests)."""
    log = pd.read_json(path, lines=True, dtype=False)
    ok = log["status"] == 200
    return log[ok].astype({"item_id": np.int64}).reset_index(drop=True), log[~ok]  # decimal text ids too


def attach_clicks(log: pd.DataFrame, truth: GroundTruth, plan: RequestPlan) -> pd.DataFrame:
    """Ground-truth click probability of the shown item and the click itself (the plan's uniform draw)."""
    p = truth.click_probability(log["user_id"].to_numpy(), log["item_id"].to_numpy(), log["device"].to_numpy(),
                                log["hour"].to_numpy())
    return log.assign(p_click=p, click=(plan.click_draw[log["i"].to_numpy()] < p).astype(np.int8))


def oracle_ctr(truth: GroundTruth, plan: RequestPlan) -> tuple[float, float]:
    """Expected CTR of (random ranking, perfect ranking) for this plan: the reference points for the arms."""
    k = plan.candidates.shape[1]
    p = truth.click_probability(np.repeat(plan.user_id, k), plan.candidates.ravel(), np.repeat(plan.device, k),
                                np.repeat(plan.hour, k)).reshape(-1, k)
    return float(p.mean()), float(p.max(axis=1).mean())


@dataclass
class AbResult:
    analysis: AbAnalysis
    out_dir: Path
    run_id: str | None


def _served_arms(url: str) -> tuple[dict[str, float], dict[str, str]]:
    import httpx

    r = httpx.get(f"{url}/arms", timeout=30)
    r.raise_for_status()
    body = r.json()
    return body["weights"], body["versions"]


def simulate(cfg: PipelineConfig, url: str, spec: SimulationSpec, progress: Callable[[str], None] = print,
             log_to_mlflow: bool = True) -> AbResult:
    """Run a simulation against the splitter at ``url`` (http://host:port/prefix); write the log, the report
    and plots to a new folder under the workspace's ``abtest/``; log them to MLflow as one run."""
    ws = Workspace.resolve(cfg.workspace)
    d = cfg.data
    truth = GroundTruth(d.num_users, d.num_items, d.days, d.seed)
    weights, versions = _served_arms(url)
    plan = plan_requests(truth, spec)
    out_dir = ws.abtest_dir / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-seed{spec.seed}-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir(parents=True)
    log_path = out_dir / "impressions.jsonl"
    progress(f"A/B simulation: {spec.requests} requests at <= {spec.rate:g}/s, <= {spec.concurrency} in flight, "
             f"arms {versions} weights {weights}")
    t0 = time.perf_counter()
    schema = dataset_schema(cfg)
    string_keys = (schema.key_is_string(schema.user_key), schema.key_is_string(schema.item_key))
    failed = asyncio.run(_send(url, plan, spec, log_path, string_keys))
    progress(f"    {spec.requests - failed} answered, {failed} failed in {time.perf_counter() - t0:.1f}s")
    if failed == spec.requests:
        raise RuntimeError(f"none of the {spec.requests} requests to {url}/rank was answered 200: is the splitter up?")
    answered, failures = read_log(log_path)
    if len(failures):
        progress(f"    failures by status: {failures['status'].value_counts().to_dict()}; first: "
                 f"{failures['error'].iloc[0]!r}")
    log = attach_clicks(answered, truth, plan)
    analysis = analyse(log, weights, versions, spec, spec.requests, failed)
    random_ctr, best_ctr = oracle_ctr(truth, plan)
    analysis.reference_ctr = {"random": random_ctr, "oracle": best_ctr}
    abreport.write_report(log, analysis, spec, out_dir)
    run_id = abreport.log_run(cfg, ws, out_dir, analysis, spec) if log_to_mlflow else None
    return AbResult(analysis=analysis, out_dir=out_dir, run_id=run_id)


def simulate_served(cfg: PipelineConfig, spec: SimulationSpec, progress: Callable[[str], None] = print,
                    versions: dict[str, str] | None = None) -> AbResult:
    """Serve ``cfg``'s arms (aliases resolved now, or ``versions`` pinned) as an application of its own
    (:data:`SIMULATION_APP`), simulate, delete that application. It joins the running HTTP proxy of this Ray
    instance if there is one; else it starts one on a free loopback port, never on ``serve.port`` (a server of
    another Ray instance may hold it). An application already serving (``mixrec serve``) keeps answering, the
    workspace's serve.json keeps pointing at it, and Serve is shut down only when no application is left."""
    from .server import deploy, stop_serving

    own = cfg.model_copy(update={"serve": cfg.serve.model_copy(
        update={"app_name": SIMULATION_APP, "route_prefix": f"/{SIMULATION_APP}", "host": "127.0.0.1",
                "port": free_loopback_port()})})
    url, _ = deploy(own, versions=versions)
    try:
        return simulate(cfg, url, spec, progress)
    finally:
        stop_serving(own)


def free_loopback_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ab_gate(spec: SimulationSpec) -> OnlineGate:
    """The promotion's online gate: serve the given arms (champion and the candidate as challenger, pinned
    versions) under the simulation's own application, simulate ``spec``, judge."""
    def gate(cfg: PipelineConfig, arms: dict[str, str], progress: Callable[[str], None]) -> OnlineVerdict:
        progress(f"online gate: serving {', '.join(f'{a} v{v}' for a, v in arms.items())}, simulating users")
        result = simulate_served(cfg, spec, progress, versions=arms)
        reasons = online_gate_reasons(result.analysis)
        return OnlineVerdict(passed=not reasons, reasons=reasons, run_id=result.run_id, detail=result)

    return gate
