"""The serving verbs: ``serve``, ``query``, ``score``, ``ab set-weights``, ``abtest simulate``. Each parses, calls one
function, prints; :func:`register` adds them to the root command (``mixrec.cli``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from mixrec.pipelines.cli_args import (
    ConfigOpt,
    DashboardOpt,
    JsonOpt,
    WorkspaceOpt,
    cli_config,
    echo_json,
    fail,
    start_dashboard,
    stdout_to_stderr,
    tracking_config,
)
from mixrec.pipelines.errors import RunFailed, Unreachable

from .client import TOKEN_ENV, parse_id, parse_items, rank, read_requests, served_url
from .splitter import normalize_weights, parse_weights

RequestsOpt = Annotated[int, typer.Option(help="simulated requests (one impression each)")]
RateOpt = Annotated[float, typer.Option(help="requests per second (pacing)")]
ConcurrencyOpt = Annotated[int, typer.Option(help="requests in flight at most")]
CandidatesOpt = Annotated[int, typer.Option(help="candidate items per request")]
SeedOpt = Annotated[int, typer.Option(help="seed of the simulated population and clicks")]
SequentialOpt = Annotated[bool, typer.Option("--sequential/--no-sequential", help="mSPRT always-valid p-values")]


def block_until_interrupted(url: str) -> None:
    typer.echo(f"serving at {url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")


def serve(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
          port: Annotated[int | None, typer.Option(help="HTTP port (loopback)")] = None,
          dashboard: DashboardOpt = False,
          write_config: Annotated[Path | None, typer.Option(
              "--write-config", help="write the application as a Ray Serve config file (for `serve run FILE` / "
              "`serve deploy FILE`; aliases resolved to versions now) and exit without serving")] = None) -> None:
    """Serve the registered champion (and challenger) behind the A/B splitter until Ctrl-C."""
    from .server import resolve_serve, start_serving

    cfg = cli_config(config, workspace, {"serve": {"port": port}} if port else None)
    if write_config:
        from mixrec.pipelines.workspace import Workspace

        from .serve_config import write_serve_config

        plan = resolve_serve(cfg, Workspace.resolve(cfg.workspace))
        typer.echo(f"wrote {write_serve_config(plan, write_config)}: `serve run` or `serve deploy` it")
        return
    start_dashboard(dashboard)
    url = start_serving(cfg)
    typer.echo(f"API docs: {url}/docs")
    block_until_interrupted(url)


def query(user: Annotated[str | None, typer.Option(help="user id (an integer or a string key)")] = None,
          items: Annotated[str | None, typer.Option(help="comma-separated candidate item ids (integers or strings)")]
          = None,
          device: Annotated[int | None, typer.Option(help="request context: device")] = None,
          hour: Annotated[int | None, typer.Option(help="request context: hour of day")] = None,
          file: Annotated[Path | None, typer.Option("--file", "-f", help="a batch of requests: JSONL (one request "
                          "object a line) or .csv (user_id, items, context columns); prints one JSON line each")] = None,
          url: Annotated[str | None, typer.Option(help="endpoint base URL (default: the one `mixrec serve` started)")] = None,
          token_env: Annotated[str, typer.Option(help="environment variable with the bearer token, sent when set")]
          = TOKEN_ENV,
          timeout: Annotated[float, typer.Option(help="seconds to wait for each response")] = 120.0,
          workspace: WorkspaceOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="compact: one JSON document a line, also for "
                                                "--user")] = False) -> None:
    """Rank items through the served endpoint: one user (--user, --items; prints the JSON response) or a batch
    (--file; prints {"line", "status", "response"} as one JSON line per request). Exit 1 if any request failed,
    3 if the endpoint cannot be reached."""
    import httpx

    if (file is None) == (user is None or items is None):
        fail("give either --user and --items, or --file")
    if file is None:
        context = {k: v for k, v in (("device", device), ("hour", hour)) if v is not None}
        requests = [{"user_id": parse_id(user), "items": parse_items(items, "--items"), "context": context}]
    else:
        requests = read_requests(file)
    base = url or served_url(workspace)
    failed = 0
    try:
        for n, (status, body) in enumerate(rank(base, requests, token_env, timeout), start=1):
            failed += status >= 400
            if file is None:
                typer.echo(json.dumps(body, indent=None if as_json else 2))
            else:
                typer.echo(json.dumps({"line": n, "status": status, "response": body}))
    except httpx.TransportError as err:
        raise Unreachable(f"cannot reach {base}: {err}") from err
    if failed:
        raise RunFailed(f"{failed} of {len(requests)} request(s) failed (their responses are above)")


ab_app = typer.Typer(no_args_is_help=True, help="The served A/B test: change arms and weights live.")


@ab_app.command("set-weights")
def ab_set_weights(weights: Annotated[list[str], typer.Argument(help="ALIAS=WEIGHT ..., e.g. champion=0.9 challenger=0.1")],
                   config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Change the weights of the running server's arms live (no dropped requests), nothing else: token, A/B
    salt, limits and versions stay as the server recorded them (--config only locates the workspace). A served
    arm left out gets no traffic. Exit 2: bad weights; 3: no running server."""
    from .server import set_weights
    from .state import join_recorded_ray

    try:
        parsed = parse_weights(weights)
        normalize_weights(parsed)  # NaN, inf, negative, all zero, overflowing sum: refused before any contact
    except ValueError as err:
        fail(str(err))
    ws = cli_config(config, workspace).workspace
    join_recorded_ray(ws)  # the recorded auth mode, before Ray is imported
    try:
        spec = set_weights(ws, parsed)  # no running server: ServerUnreachable, exit 3
    except ValueError as err:
        fail(str(err))
    weights = normalize_weights(spec.weights)
    if as_json:
        echo_json({"model_name": spec.model_name, "arms": spec.arms, "weights": weights})
        return
    shares = ", ".join(f"{arm} (v{spec.arms[arm]}) {w:.0%}" for arm, w in weights.items())
    typer.echo(f"serving {spec.model_name}: {shares}")


def simulation_spec(requests: int, rate: float, concurrency: int, candidates: int, seed: int, sequential: bool,
                    expected_weights: str | None = None):
    """The A/B simulation the options describe; a bad value fails with exit 2."""
    from .abanalysis import SimulationSpec

    try:
        expected = parse_weights(expected_weights.split(",")) if expected_weights else None
        return SimulationSpec(requests=requests, rate=rate, concurrency=concurrency, candidates=candidates,
                              seed=seed, sequential=sequential, expected_weights=expected)
    except ValueError as err:
        fail(str(err))


def echo_ab_result(result) -> None:
    """Per-arm CTRs with intervals, the lift test, mSPRT, SRM and where the report is."""
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


def ab_result_json(result) -> dict:
    """The simulation's analysis as plain data: per-arm CTRs, lift, SRM, mSPRT, where the report is."""
    from dataclasses import asdict

    a = result.analysis
    seq = a.sequential
    return {"requests": a.requests, "failed": a.failed, "weights": a.weights, "versions": a.versions,
            "true_ctr": a.true_ctr, "arms": [asdict(s) for s in a.arms],
            "lift": asdict(a.lift) if a.lift else None, "srm": asdict(a.srm),
            "sequential": None if seq is None or not len(seq.p_values) else
            {"p_value": float(seq.p_values[-1]), "stopped_at": seq.stopped_at},
            "report": str(result.out_dir / "report.md"), "mlflow_run_id": result.run_id}


abtest_app = typer.Typer(no_args_is_help=True, help="A/B simulation against the served splitter.")


@abtest_app.command("simulate")
def abtest_simulate(config: ConfigOpt = None, workspace: WorkspaceOpt = None,
                    url: Annotated[str | None, typer.Option(help="splitter base URL, e.g. http://127.0.0.1:8000/mixrec "
                                                            "(default: start Serve from the config, stop after)")] = None,
                    requests: RequestsOpt = 2000, rate: RateOpt = 200.0, concurrency: ConcurrencyOpt = 16,
                    candidates: CandidatesOpt = 20, seed: SeedOpt = 0, sequential: SequentialOpt = True,
                    expected_weights: Annotated[str | None, typer.Option(
                        help="SRM reference, e.g. champion=0.5,challenger=0.5 (default: the served weights)")] = None,
                    as_json: JsonOpt = False) -> None:
    """Synthetic users (ground-truth clicks) against the served champion/challenger: CTRs, lift, z-test,
    SRM, mSPRT; report + plots in the workspace and MLflow."""
    import httpx

    from .abtest import simulate, simulate_served

    cfg = tracking_config(config, workspace)
    spec = simulation_spec(requests, rate, concurrency, candidates, seed, sequential, expected_weights)
    try:
        with stdout_to_stderr(as_json):
            result = simulate(cfg, url.rstrip("/"), spec, typer.echo) if url else simulate_served(cfg, spec, typer.echo)
    except httpx.TransportError as err:
        raise Unreachable(f"cannot reach the splitter at {url}: {err}") from err
    if as_json:
        echo_json(ab_result_json(result))
    else:
        echo_ab_result(result)


def score(path: Annotated[Path, typer.Argument(help="Parquet or CSV file, or a folder of them: candidate rows "
                                                    "(user and item keys, request fields)")],
          output: Annotated[Path | None, typer.Option("--output", "-o", help="Parquet folder to write "
                                                      "(default: <input>.scores beside the input)")] = None,
          alias: Annotated[str, typer.Option(help="score with the version this alias points at")] = "champion",
          version: Annotated[str | None, typer.Option("--version", help="score with this version (not --alias)")] = None,
          batch_size: Annotated[int, typer.Option(min=1, help="rows per model call")] = 4096,
          workers: Annotated[int, typer.Option(min=1, help="scoring actors (each loads the model once)")] = 1,
          config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Batch-score candidate rows with a registered version on Ray Data: user and item features from the online
    store, the version's own preprocessing; writes the input's keys and a `score` column, one row per input row."""
    from mixrec.pipelines.config import dataset_schema
    from mixrec.pipelines.registry import check_version_exists, resolve_alias
    from mixrec.pipelines.runtime import QUIET_ENV, init_ray
    from mixrec.pipelines.workspace import Workspace

    from .score import ScoreError, check_input, input_files, score_files

    cfg = cli_config(config, workspace)
    schema = dataset_schema(cfg)
    check_input(*input_files(path), schema)  # bad input (ScoreError: exit 2) fails here, before MLflow or Ray start
    cfg = tracking_config(config, workspace)
    import mlflow

    name = cfg.registry.model_name
    if version:  # an unknown version or alias is a RegistryError: exit 2
        check_version_exists(mlflow.MlflowClient(), name, version)
    else:
        version = resolve_alias(name, alias)
    out = output or path.with_name(f"{path.name.removesuffix(path.suffix) if path.is_file() else path.name}.scores")
    ray = init_ray()
    try:
        result = score_files(path, out, schema, name, version, mlflow.get_tracking_uri(),
                             Workspace.resolve(cfg.workspace).feast_repo, dict(QUIET_ENV), batch_size, workers)
    except ScoreError:
        raise
    except (ray.exceptions.RayError, OSError, ValueError) as err:  # a bad row deep in a file: one line, no traceback
        cause = getattr(err, "cause", None) or err
        fail(f"scoring {path} failed: {str(cause).strip().splitlines()[-1][:500]}")
    if as_json:
        echo_json({"rows": result.rows, "input": str(path), "output": str(result.output), "model_name": name,
                   "model_version": result.model_version})
        return
    typer.echo(f"scored {result.rows:,} rows of {path} with {name} v{result.model_version} -> {result.output}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(query)
    app.command()(score)
    app.add_typer(ab_app, name="ab")
    app.add_typer(abtest_app, name="abtest")
