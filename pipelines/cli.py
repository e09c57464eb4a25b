"""The ``mixrec`` command line: each verb parses, calls one function, prints."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from .config import ConfigError, PipelineConfig, load_config, parse_config
from .runtime import quiet_environment

quiet_environment()
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mixrec: Feast -> Ray Data + Great Expectations -> Ray Train -> MLflow -> Ray Serve A/B.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="pipeline config YAML (default: built-in)")]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", help="workspace folder (default $MIXREC_HOME or ./mixrec-workspace)")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _config(path: Path | None, workspace: Path | None, overrides: dict | None = None) -> PipelineConfig:
    try:
        cfg = load_config(path) if path else PipelineConfig()
        data = cfg.to_dict()
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        if workspace:
            data["workspace"] = str(workspace)
        return parse_config(data, str(path) if path else "(defaults)")
    except ConfigError as err:
        _fail(str(err))


def _print_ranked(response: dict) -> None:
    typer.echo(f"user {response['user_id']} -> arm {response['arm']} "
               f"({response['model_name']} v{response['model_version']})")
    for rank, item in enumerate(response["ranked"], 1):
        typer.echo(f"  {rank:>2}. item {item['item_id']:>6}  score {item['score']:.4f}")


def _run(cfg: PipelineConfig, fresh: bool):
    from .run import run_pipeline

    result = run_pipeline(cfg, fresh=fresh, progress=typer.echo)
    typer.echo(f"registered {result.model_name} v{result.version} (aliases: {', '.join(result.aliases) or '-'}); "
               f"test AUC {result.metrics['test_auc']:.4f}, logloss {result.metrics['test_logloss']:.4f}")
    return result


def _block_until_interrupted(url: str) -> None:
    typer.echo(f"serving at {url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="synthetic events to generate")] = 200_000,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 3,
    model: Annotated[str, typer.Option(help="model name (see `mixrec models`)")] = "rankmixer",
    port: Annotated[int, typer.Option(help="HTTP port of the served endpoint (loopback)")] = 8000,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete the workspace first")] = False,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="leave the server up after the demo")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Whole pipeline on embedded defaults: generate, Feast, validate, train, register, serve, query."""
    import httpx

    from mixrec.serving.server import start_serving

    t0 = time.perf_counter()
    cfg = _config(None, workspace, {"data": {"num_events": events}, "train": {"epochs": epochs},
                                    "model": {"name": model}, "serve": {"port": port}})
    result = _run(cfg, fresh)
    typer.echo("[serve] Ray Serve: ranker behind the A/B splitter ...")
    t_serve = time.perf_counter()
    url = start_serving(cfg)
    result.step_seconds["serve"] = round(time.perf_counter() - t_serve, 2)
    typer.echo(f"    serving at {url} in {result.step_seconds['serve']:.1f}s")
    t_query = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for user in (1, 2, 3):
            r = client.post(f"{url}/rank", json={"user_id": user, "items": [1, 5, 9, 13, 21, 34, 55, 89],
                                                 "context": {"device": 1, "hour": 20}})
            if r.status_code != 200:
                _fail(f"the served endpoint answered {r.status_code}: {r.text}")
            _print_ranked(r.json())
    result.step_seconds["query"] = round(time.perf_counter() - t_query, 2)
    total = time.perf_counter() - t0
    typer.echo("step seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.step_seconds.items())
               + f"; total {total:.1f}")
    if keep_serving:
        _block_until_interrupted(url)


@app.command()
def run(config: Annotated[Path, typer.Argument(help="pipeline config YAML")],
        fresh: Annotated[bool, typer.Option("--fresh", help="delete the workspace first")] = False,
        workspace: WorkspaceOpt = None) -> None:
    """Run the pipeline (generate -> ... -> register) from a config file."""
    _run(_config(config, workspace), fresh)


@app.command()
def serve(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
          port: Annotated[int | None, typer.Option(help="HTTP port (loopback)")] = None) -> None:
    """Serve the registered champion (and challenger) behind the A/B splitter until Ctrl-C."""
    from mixrec.pipelines.registry import RegistryError
    from mixrec.serving.server import start_serving

    cfg = _config(config, workspace, {"serve": {"port": port}} if port else None)
    try:
        url = start_serving(cfg)
    except RegistryError as err:
        _fail(str(err))
    _block_until_interrupted(url)


def _served_url(url: str | None, workspace: Path | None) -> str:
    from .workspace import Workspace

    if url is not None:
        return url
    state = Workspace.resolve(workspace).serve_state
    if not state.exists():
        _fail(f"no --url given and no running server recorded in {state}: start `mixrec serve` first")
    return json.loads(state.read_text())["url"]


def _parse_items(text: str, where: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(";", ",").replace(" ", ",").split(",") if x.strip()]
    except ValueError:
        _fail(f"{where} must be comma-separated integers, got {text!r}")


def _read_requests(path: Path) -> list[dict]:
    """A batch of rank requests from JSONL (one request object a line) or CSV (columns user_id, items as
    "1,5,9" or "1 5 9", and optional context columns such as device, hour). Errors name the file and line."""
    if not path.is_file():
        _fail(f"--file {path}: no such file")
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"user_id", "items"} - set(reader.fieldnames or [])
            if missing:
                _fail(f"{path}: missing column(s) {sorted(missing)}; header has {reader.fieldnames}")
            requests = []
            for line, row in enumerate(reader, start=2):
                try:
                    context = {k: int(v) for k, v in row.items() if k not in ("user_id", "items") and v not in ("", None)}
                    user = int(row["user_id"])
                except (TypeError, ValueError):
                    _fail(f"{path}:{line}: user_id and context columns must be integers, got {row}")
                requests.append({"user_id": user, "items": _parse_items(row["items"] or "", f"{path}:{line}: items"),
                                 "context": context})
        return requests
    requests = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            request = json.loads(text)
        except json.JSONDecodeError as err:
            _fail(f"{path}:{line}: not valid JSON ({err.msg}); expected one request object a line")
        if not isinstance(request, dict):
            _fail(f"{path}:{line}: expected a JSON object like {{\"user_id\": 1, \"items\": [1, 2]}}")
        requests.append(request)
    return requests


def _auth_headers(token_env: str) -> dict[str, str]:
    import os

    token = os.environ.get(token_env)
    return {"Authorization": f"Bearer {token}"} if token else {}


@app.command()
def query(user: Annotated[int | None, typer.Option(help="user id")] = None,
          items: Annotated[str | None, typer.Option(help="comma-separated candidate item ids")] = None,
          device: Annotated[int | None, typer.Option(help="request context: device")] = None,
          hour: Annotated[int | None, typer.Option(help="request context: hour of day")] = None,
          file: Annotated[Path | None, typer.Option("--file", "-f", help="a batch of requests: JSONL (one request "
                          "object a line) or .csv (user_id, items, context columns); prints one JSON line each")] = None,
          url: Annotated[str | None, typer.Option(help="endpoint base URL (default: the one `mixrec serve` started)")] = None,
          token_env: Annotated[str, typer.Option(help="environment variable with the bearer token, sent when set")]
          = "MIXREC_SERVE_TOKEN",
          timeout: Annotated[float, typer.Option(help="seconds to wait for each response")] = 120.0,
          workspace: WorkspaceOpt = None) -> None:
    """Rank items through the served endpoint: one user (--user, --items; prints the JSON response) or a batch
    (--file; prints {"line", "status", "response"} as one JSON line per request). Exit 1 if any request failed."""
    import httpx

    if (file is None) == (user is None or items is None):
        _fail("give either --user and --items, or --file")
    if file is None:
        context = {k: v for k, v in (("device", device), ("hour", hour)) if v is not None}
        requests = [{"user_id": user, "items": _parse_items(items, "--items"), "context": context}]
    else:
        requests = _read_requests(file)
    base = _served_url(url, workspace)
    failed = 0
    with httpx.Client(base_url=base, timeout=timeout, headers=_auth_headers(token_env)) as client:
        for n, request in enumerate(requests, start=1):
            try:
                r = client.post("/rank", json=request)
            except httpx.HTTPError as err:
                _fail(f"cannot reach {base}: {err}")
            failed += r.status_code >= 400
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
            if file is None:
                typer.echo(json.dumps(body, indent=2))
            else:
                typer.echo(json.dumps({"line": n, "status": r.status_code, "response": body}))
    if failed:
        raise typer.Exit(1)


def _join_serving_auth_mode(cfg: PipelineConfig) -> None:
    """Ray 2.60 enables token auth on a new local cluster but not in a process that joins it by address, and
    reads the mode once, when ray is imported: so set it from serve.json before anything imports ray."""
    import os

    from .workspace import Workspace

    state = Workspace.resolve(cfg.workspace).serve_state
    mode = json.loads(state.read_text()).get("ray_auth_mode") if state.exists() else None
    if mode:
        os.environ.setdefault("RAY_AUTH_MODE", mode)


ab_app = typer.Typer(no_args_is_help=True, help="The served A/B test: change arms and weights live.")
app.add_typer(ab_app, name="ab")


@ab_app.command("set-weights")
def ab_set_weights(weights: Annotated[list[str], typer.Argument(help="ALIAS=WEIGHT ..., e.g. champion=0.9 challenger=0.1")],
                   config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Change the served arms and weights live (no dropped requests): aliases are resolved again, the splitter
    is reconfigured, rankers of unchanged versions keep running. An alias left out gets no traffic."""
    from mixrec.pipelines.registry import RegistryError

    parsed: dict[str, float] = {}
    for item in weights:
        alias, sep, value = item.partition("=")
        try:
            parsed[alias.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not alias.strip():
            _fail(f"weights must be ALIAS=NUMBER, e.g. champion=0.9; got {item!r}")
    cfg = _config(config, workspace)
    _join_serving_auth_mode(cfg)
    from mixrec.serving.server import set_weights

    try:
        spec = set_weights(cfg, parsed)
    except (RegistryError, ConfigError, ValueError) as err:
        _fail(str(err))
    from mixrec.serving.splitter import normalize_weights

    shares = ", ".join(f"{arm} (v{spec.arms[arm]}) {w:.0%}" for arm, w in normalize_weights(spec.weights).items())
    typer.echo(f"serving {spec.model_name}: {shares}")


def _setup_registry(config: Path | None, workspace: Path | None) -> PipelineConfig:
    from .registry import setup_tracking
    from .workspace import Workspace

    cfg = _config(config, workspace)
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, Workspace.resolve(cfg.workspace))
    return cfg


def _parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        return {arm.strip(): float(w) for arm, w in pairs}
    except ValueError:
        _fail(f"--expected-weights must look like champion=0.5,challenger=0.5, got {text!r}")


def _ab_spec(requests: int, rate: float, concurrency: int, candidates: int, seed: int, sequential: bool,
             expected_weights: str | None = None):
    from mixrec.serving.abtest import SimulationSpec

    try:
        return SimulationSpec(requests=requests, rate=rate, concurrency=concurrency, candidates=candidates,
                              seed=seed, sequential=sequential, expected_weights=_parse_weights(expected_weights))
    except ValueError as err:
        _fail(str(err))


RequestsOpt = Annotated[int, typer.Option(help="simulated requests (one impression each)")]
RateOpt = Annotated[float, typer.Option(help="requests per second (pacing)")]
ConcurrencyOpt = Annotated[int, typer.Option(help="requests in flight at most")]
CandidatesOpt = Annotated[int, typer.Option(help="candidate items per request")]
SeedOpt = Annotated[int, typer.Option(help="seed of the simulated population and clicks")]
SequentialOpt = Annotated[bool, typer.Option("--sequential/--no-sequential", help="mSPRT always-valid p-values")]


def _print_ab(result) -> None:
    a = result.analysis
    for s in a.arms:
        typer.echo(f"  {s.arm:<12} v{a.versions.get(s.arm, '?'):<4} impressions {s.impressions:>6}  clicks {s.clicks:>5}  "
                   f"CTR {s.ctr:.4f} [{s.ctr_low:.4f}, {s.ctr_high:.4f}]  true CTR {a.true_ctr.get(s.arm, float('nan')):.4f}")
    if a.lift:
        typer.echo(f"  lift {a.lift.absolute_lift:+.4f} ({a.lift.relative_lift:+.1%}), z {a.lift.z:.2f}, "
                   f"p {a.lift.p_value:.2e}: " + (f"{a.lift.winner} wins" if a.lift.significant else "not significant"))
    if a.sequential is not None and len(a.sequential.p_values):
        typer.echo(f"  mSPRT always-valid p {a.sequential.p_values[-1]:.2e}"
                   + (f", boundary crossed at {a.sequential.stopped_at} impressions" if a.sequential.stopped_at else ""))
    typer.echo(f"  SRM chi2 {a.srm.chi2:.2f}, p {a.srm.p_value:.2e}: " + ("MISMATCH" if a.srm.mismatch else "ok"))
    typer.echo(f"  report: {result.out_dir / 'report.md'}" + (f" (MLflow run {result.run_id})" if result.run_id else ""))


@app.command()
def promote(version: Annotated[str, typer.Argument(help="model version to make champion")],
            config: ConfigOpt = None, workspace: WorkspaceOpt = None,
            reason: Annotated[str, typer.Option(help="why (recorded as a tag)")] = "manual promotion",
            force: Annotated[bool, typer.Option("--force", help="promote even when a gate fails (recorded)")] = False,
            require_ab: Annotated[bool, typer.Option("--require-ab", help="also require a simulated online A/B "
                                                     "test through the served endpoint to favour VERSION")] = False,
            data: Annotated[Path | None, typer.Option(help="held-out Parquet (model columns + label); default: "
                                                      "the workspace's test split")] = None,
            requests: RequestsOpt = 2000, rate: RateOpt = 200.0, concurrency: ConcurrencyOpt = 16,
            candidates: CandidatesOpt = 20, seed: SeedOpt = 0) -> None:
    """Move `champion` to VERSION if it beats the champion on held-out data (paired bootstrap CIs of the AUC
    and logloss deltas), and with --require-ab also in a simulated A/B test; --force overrides."""
    from .promotion import PromotionRefused, gated_promote
    from .registry import RegistryError

    cfg = _setup_registry(config, workspace)
    spec = _ab_spec(requests, rate, concurrency, candidates, seed, True) if require_ab else None
    try:
        out = gated_promote(cfg, version, force=force, require_ab=require_ab, data=data, reason=reason,
                            ab_spec=spec, progress=typer.echo)
    except PromotionRefused as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except RegistryError as err:
        _fail(str(err))
    c = out.comparison
    typer.echo(f"  AUC {c.champion_auc:.4f} -> {c.challenger_auc:.4f}, delta {c.auc_delta.estimate:+.4f} "
               f"[{c.auc_delta.low:+.4f}, {c.auc_delta.high:+.4f}]; logloss {c.champion_logloss:.4f} -> "
               f"{c.challenger_logloss:.4f}, delta {c.logloss_delta.estimate:+.4f} "
               f"[{c.logloss_delta.low:+.4f}, {c.logloss_delta.high:+.4f}] (MLflow run {out.eval_run_id})")
    if out.ab is not None:
        _print_ab(out.ab)
    if out.reasons:
        typer.echo("  forced past: " + "; ".join(out.reasons))
    typer.echo(f"{out.model_name} v{version} is now champion (was v{out.champion_before})")


@app.command()
def rollback(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
             reason: Annotated[str, typer.Option(help="why (recorded as a tag)")] = "rollback") -> None:
    """Move `champion` back to the version it pointed at before its last move."""
    from .registry import RegistryError
    from .registry import rollback as rollback_champion

    cfg = _setup_registry(config, workspace)
    try:
        mv = rollback_champion(cfg.registry.model_name, reason=reason)
    except RegistryError as err:
        _fail(str(err))
    typer.echo(f"{mv.name} v{mv.version} is champion again (aliases: {', '.join(mv.aliases)})")


abtest_app = typer.Typer(no_args_is_help=True, help="A/B simulation against the served splitter.")
app.add_typer(abtest_app, name="abtest")


@abtest_app.command("simulate")
def abtest_simulate(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
                    url: Annotated[str | None, typer.Option(help="splitter base URL, e.g. http://127.0.0.1:8000/mixrec "
                                                            "(default: start Serve from the config, stop after)")] = None,
                    requests: RequestsOpt = 2000, rate: RateOpt = 200.0, concurrency: ConcurrencyOpt = 16,
                    candidates: CandidatesOpt = 20, seed: SeedOpt = 0, sequential: SequentialOpt = True,
                    expected_weights: Annotated[str | None, typer.Option(
                        help="SRM reference, e.g. champion=0.5,challenger=0.5 (default: the served weights)")] = None
                    ) -> None:
    """Synthetic users (ground-truth clicks) against the served champion/challenger: CTRs, lift, z-test,
    SRM, mSPRT; report + plots in the workspace and MLflow."""
    from mixrec.serving.abtest import simulate, simulate_served

    from .registry import RegistryError

    cfg = _setup_registry(config, workspace)
    spec = _ab_spec(requests, rate, concurrency, candidates, seed, sequential, expected_weights)
    import httpx

    try:
        result = simulate(cfg, url.rstrip("/"), spec, typer.echo) if url else simulate_served(cfg, spec, typer.echo)
    except (RegistryError, RuntimeError) as err:
        _fail(str(err))
    except httpx.HTTPError as err:
        _fail(f"cannot reach the splitter at {url}: {err}")
    _print_ab(result)


AddressOpt = Annotated[str, typer.Option("--address", envvar="RAY_JOBS_ADDRESS",
                                         help="Ray dashboard / Jobs API address, e.g. http://127.0.0.1:8265")]
jobs_app = typer.Typer(no_args_is_help=True, help="Ray Jobs on a cluster: list, status, logs, stop.")
app.add_typer(jobs_app, name="jobs")


@app.command()
def submit(config: Annotated[Path, typer.Argument(help="pipeline config YAML")], address: AddressOpt,
           wait: Annotated[bool, typer.Option("--wait", help="follow until the job ends; exit 1 unless it succeeded")] = False
           ) -> None:
    """Submit the pipeline to a Ray cluster as a Ray Job; prints the job id."""
    from . import jobs

    try:
        job_id = jobs.submit(config, address)
    except ConfigError as err:
        _fail(str(err))
    typer.echo(job_id)
    if wait:
        final = jobs.wait(address, job_id, progress=lambda s: typer.echo(f"  {s}", err=True))
        if final != "SUCCEEDED":
            typer.echo(jobs.logs(address, job_id)[-4000:], err=True)
            raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(address: AddressOpt) -> None:
    from . import jobs

    for j in jobs.list_jobs(address):
        typer.echo(f"{j['job_id']:<28}{j['status']:<12}{j['entrypoint']}")


@jobs_app.command("status")
def jobs_status(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo(jobs.status(address, job_id))


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo(jobs.logs(address, job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: AddressOpt) -> None:
    from . import jobs

    typer.echo("stopped" if jobs.stop(address, job_id) else "not running")


@app.command()
def tune(study: Annotated[Path, typer.Argument(help="study YAML (see configs/study_demo.yaml)")],
         resume: Annotated[bool, typer.Option("--resume", help="continue a stopped study: run only missing points")] = False
         ) -> None:
    """Scaling study: architectures x sizes as Ray Train trials under Ray Tune; power-law fits, plots, ROI pick."""
    from mixrec.tuning.study import load_study, run_study

    try:
        spec = load_study(study)
    except ConfigError as err:
        _fail(str(err))
    out = run_study(spec, resume=resume, progress=typer.echo)
    for arch, fit in out["analysis"]["fits"].items():
        for axis, f in fit.items():
            typer.echo(f"{arch:<14} loss ~ C^-alpha vs {axis:<15} alpha={f['alpha']:.3f} "
                       f"[{f['alpha_low']:.3f}, {f['alpha_high']:.3f}] ({f['points']} points) {f['note']}")
    pick = out["analysis"]["roi_pick"]
    if pick:
        typer.echo(f"ROI pick (budget {out['analysis']['flops_budget']} FLOPs/example): {pick['id']} "
                   f"logloss {pick['valid_logloss']:.4f}")
    typer.echo(f"results, plots and fits: {out['out_dir']} (MLflow run {out['run_id']})")


@app.command()
def models() -> None:
    """The model zoo: name, parameters, MFLOPs per example at the default size."""
    from mixrec.models import model_summary_table

    rows = model_summary_table()
    typer.echo(f"{'model':<24}{'parameters':>14}{'MFLOPs/example':>16}")
    for row in rows:
        typer.echo(f"{row.name:<24}{row.parameters:>14,}{row.mflops_per_example:>16.3f}")


def main() -> None:
    try:
        app()
    except ConfigError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
