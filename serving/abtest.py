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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd

from mixrec.features.synthetic import NUM_DEVICES, NUM_HOURS, GroundTruth
from mixrec.pipelines import registry
from mixrec.pipelines.config import PipelineConfig
from mixrec.pipelines.registry import CHALLENGER, CHAMPION, RegistryError
from mixrec.pipelines.workspace import Workspace

from . import abreport, abstats

if TYPE_CHECKING:
    from mixrec.pipelines.promotion import OnlineVerdict

RETRIES_ON_503 = 3
SIMULATION_APP = "mixrec-abgate"  # the Serve application (and route prefix) simulate_served deploys


@dataclass
class SimulationSpec:
    requests: int = 2000
    rate: float = 200.0  # requests per second (pacing); the server may be slower, then concurrency bounds it
    concurrency: int = 16
    candidates: int = 20
    seed: int = 0
    control: str = "champion"
    treatment: str = "challenger"
    alpha: float = 0.05
    sequential: bool = True
    tau: float = 0.05  # mSPRT mixing scale, in CTR units
    look_every: int = 100
    expected_weights: dict[str, float] | None = None  # SRM reference; default: the weights the splitter reports

    def __post_init__(self):
        bad = [name for name, ok in (("requests", self.requests >= 1), ("rate", self.rate > 0),
                                     ("concurrency", self.concurrency >= 1), ("candidates", self.candidates >= 1),
                                     ("alpha", 0 < self.alpha < 1), ("look_every", self.look_every >= 1))
               if not ok]
        if bad:
            raise ValueError(f"invalid A/B simulation setting(s): {', '.join(bad)} ({self})")


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


async def _send(url: str, plan: RequestPlan, spec: SimulationSpec, log_path: Path) -> int:
    """Send the plan's requests; append one JSON line per answered request. Returns the failed count."""
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
        body = {"user_id": int(plan.user_id[i]), "items": plan.candidates[i].tolist(),
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
        record = {"i": i, "t": round(loop.time() - t0, 4), "user_id": body["user_id"],
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
    return log[ok].astype({"item_id": np.int64}).reset_index(drop=True), log[~ok]


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
class AbAnalysis:
    arms: list[abstats.ArmStats]
    lift: abstats.LiftTest | None
    srm: abstats.SrmCheck
    sequential: abstats.SequentialTest | None
    true_ctr: dict[str, float]  # mean ground-truth click probability of the shown items, per arm
    requests: int
    failed: int
    weights: dict[str, float]
    versions: dict[str, str]
    reference_ctr: dict[str, float] = field(default_factory=dict)

    @property
    def treatment_wins(self) -> bool:
        return bool(self.lift and self.lift.significant and self.lift.winner == self.lift.treatment)

    def metrics(self) -> dict[str, float]:
        out = {"requests": self.requests, "failed_requests": self.failed, "srm_p_value": self.srm.p_value,
               "srm_chi2": self.srm.chi2}
        for a in self.arms:
            out.update({f"{a.arm}_impressions": a.impressions, f"{a.arm}_clicks": a.clicks, f"{a.arm}_ctr": a.ctr,
                        f"{a.arm}_true_ctr": self.true_ctr.get(a.arm, float("nan"))})
        if self.lift:
            out.update({"absolute_lift": self.lift.absolute_lift, "relative_lift": self.lift.relative_lift,
                        "z": self.lift.z, "p_value": self.lift.p_value})
        if self.sequential and len(self.sequential.p_values):
            out["msprt_final_p_value"] = float(self.sequential.p_values[-1])
        return {k: float(v) for k, v in out.items() if v == v}


def analyse(log: pd.DataFrame, weights: dict[str, float], versions: dict[str, str], spec: SimulationSpec,
            requests: int, failed: int) -> AbAnalysis:
    """Statistics of an impression log with clicks (one row per impression, in completion order)."""
    grouped = log.groupby("arm").agg(impressions=("click", "size"), clicks=("click", "sum"), true_ctr=("p_click", "mean"))
    arms = [abstats.arm_stats(arm, int(row.impressions), int(row.clicks)) for arm, row in grouped.iterrows()]
    by_arm = {a.arm: a for a in arms}
    lift = seq = None
    if spec.control in by_arm and spec.treatment in by_arm:
        lift = abstats.lift_test(by_arm[spec.control], by_arm[spec.treatment], spec.alpha)
        if spec.sequential:
            both = log[log["arm"].isin([spec.control, spec.treatment])]
            seq = abstats.msprt(both["arm"].to_numpy() == spec.treatment, both["click"].to_numpy(), spec.alpha,
                                spec.tau, spec.look_every)
    srm = abstats.srm_check({a.arm: a.impressions for a in arms}, spec.expected_weights or weights)
    return AbAnalysis(arms=arms, lift=lift, srm=srm, sequential=seq, true_ctr=grouped["true_ctr"].to_dict(),
                      requests=requests, failed=failed, weights=weights, versions=versions)


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
    failed = asyncio.run(_send(url, plan, spec, log_path))
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


def simulate_served(cfg: PipelineConfig, spec: SimulationSpec, progress: Callable[[str], None] = print) -> AbResult:
    """Serve ``cfg``'s arms (aliases resolved now) as an application of its own (:data:`SIMULATION_APP`, on
    the running HTTP proxy if there is one), simulate, delete that application. An application already serving
    (``mixrec serve``) keeps answering, and the workspace's serve.json keeps pointing at it."""
    from .server import deploy, stop_serving

    own = cfg.model_copy(update={"serve": cfg.serve.model_copy(
        update={"app_name": SIMULATION_APP, "route_prefix": f"/{SIMULATION_APP}"})})
    url, _ = deploy(own)
    try:
        return simulate(cfg, url, spec, progress)
    finally:
        stop_serving(own)


def online_gate_reasons(analysis: AbAnalysis) -> list[str]:
    """Why the simulated A/B test does not let the challenger (the treatment) be promoted; empty: it may."""
    if analysis.srm.mismatch:
        return [f"A/B sample-ratio mismatch (p = {analysis.srm.p_value:.2e}): the test is invalid"]
    if not analysis.treatment_wins:
        lift = analysis.lift
        return ["A/B test does not favour the challenger" + (
            f": lift {lift.absolute_lift:+.4f}, p = {lift.p_value:.2e}" if lift else ": an arm got no traffic")]
    return []


def ab_gate(spec: SimulationSpec) -> Callable[[PipelineConfig, str, Callable[[str], None]], OnlineVerdict]:
    """The promotion's online gate: point ``challenger`` at the candidate version (recorded), serve champion
    vs challenger under the simulation's own application, simulate ``spec``, and judge the result."""
    def gate(cfg: PipelineConfig, version: str, progress: Callable[[str], None]) -> OnlineVerdict:
        from mixrec.pipelines.promotion import OnlineVerdict

        name, arms = cfg.registry.model_name, cfg.serve.arms
        if CHAMPION not in arms or CHALLENGER not in arms:
            raise RegistryError(f"--require-ab needs serve.arms with {CHAMPION!r} and {CHALLENGER!r}, got {arms}")
        client = mlflow.MlflowClient()
        if registry._alias_version(client, name, CHALLENGER) != version:
            registry._move_alias(client, name, CHALLENGER, version, reason="online A/B gate of a promotion")
        progress(f"online gate: serving champion and challenger v{version}, simulating users")
        result = simulate_served(cfg, spec, progress)
        reasons = online_gate_reasons(result.analysis)
        return OnlineVerdict(passed=not reasons, reasons=reasons, run_id=result.run_id, detail=result)

    return gate
