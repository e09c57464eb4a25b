"""``mixrec demo``: the whole path on embedded defaults, from generated events to ranked answers over HTTP."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from mixrec.pipelines.cli import echo_where_to_look, run_and_report
from mixrec.pipelines.cli_args import DashboardOpt, WorkspaceOpt, cli_config, start_dashboard
from mixrec.pipelines.errors import RunFailed
from mixrec.serving.cli import block_until_interrupted
from mixrec.serving.client import rank

DEMO_USERS = (1, 2, 3)
DEMO_ITEMS = [1, 5, 9, 13, 21, 34, 55, 89]
DEMO_CONTEXT = {"device": 1, "hour": 20}


def echo_ranked(response: dict) -> None:
    typer.echo(f"user {response['user_id']} -> arm {response['arm']} "
               f"({response['model_name']} v{response['model_version']})")
    for position, item in enumerate(response["ranked"], 1):
        typer.echo(f"  {position:>2}. item {item['item_id']:>6}  score {item['score']:.4f}")


def demo(
    events: Annotated[int, typer.Option(help="synthetic events to generate")] = 200_000,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 3,
    model: Annotated[str, typer.Option(help="model name (see `mixrec models`)")] = "rankmixer",
    port: Annotated[int, typer.Option(help="HTTP port of the served endpoint (loopback)")] = 8000,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete the workspace first (only a mixrec workspace)")] = False,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="leave the server up after the demo")] = False,
    workspace: WorkspaceOpt = None,
    dashboard: DashboardOpt = False,
) -> None:
    """Whole pipeline on embedded defaults: generate, Feast, validate, train, register, serve, query."""
    from mixrec.serving.server import start_serving

    t0 = time.perf_counter()
    cfg = cli_config(None, workspace, {"data": {"num_events": events}, "train": {"epochs": epochs},
                                       "model": {"name": model}, "serve": {"port": port}})
    start_dashboard(dashboard)
    result, links = run_and_report(cfg, fresh)
    typer.echo("[serve] Ray Serve: ranker behind the A/B splitter ...")
    t_serve = time.perf_counter()
    url = start_serving(cfg)
    result.step_seconds["serve"] = round(time.perf_counter() - t_serve, 2)
    typer.echo(f"    serving at {url} in {result.step_seconds['serve']:.1f}s")
    t_query = time.perf_counter()
    requests = [{"user_id": user, "items": DEMO_ITEMS, "context": DEMO_CONTEXT} for user in DEMO_USERS]
    for status, body in rank(url, requests, timeout=30):
        if status != 200:
            raise RunFailed(f"the served endpoint answered {status}: {body}")
        echo_ranked(body)
    result.step_seconds["query"] = round(time.perf_counter() - t_query, 2)
    total = time.perf_counter() - t0
    typer.echo("step seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.step_seconds.items())
               + f"; total {total:.1f}")
    echo_where_to_look(links, url, kept_up=keep_serving)
    if keep_serving:
        block_until_interrupted(url)


def register(app: typer.Typer) -> None:
    app.command()(demo)
