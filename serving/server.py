"""Start and stop the Serve application from a pipeline config: resolve aliases, bind to loopback."""

from __future__ import annotations

import json

from mixrec.pipelines.config import PipelineConfig
from mixrec.pipelines.registry import RegistryError, resolve_alias, setup_tracking
from mixrec.pipelines.runtime import QUIET_ENV, init_ray
from mixrec.pipelines.workspace import Workspace

from .app import ServeSpec, build_app

APP_NAME = "mixrec"


def resolve_arms(model_name: str, weights: dict[str, float]) -> tuple[dict[str, str], dict[str, float]]:
    """Aliases -> versions, once, at start. An alias that is missing, or that points at a version an earlier
    arm already serves (a first model is champion and challenger at once), folds its weight into that arm:
    champion gets 100 % while there is no distinct challenger."""
    arms: dict[str, str] = {}
    merged: dict[str, float] = {}
    for alias in sorted(weights, key=lambda a: (a != "champion", a)):
        try:
            version = resolve_alias(model_name, alias)
        except RegistryError:
            continue
        same = next((arm for arm, v in arms.items() if v == version), None)
        if same:
            merged[same] += weights[alias]
        else:
            arms[alias], merged[alias] = version, weights[alias]
    if not arms:
        raise RegistryError(f"none of the aliases {sorted(weights)} of model {model_name!r} exists: train first")
    if sum(merged.values()) <= 0:
        merged = {arm: 1.0 for arm in merged}
    return arms, merged


def serve_spec(cfg: PipelineConfig, ws: Workspace) -> ServeSpec:
    tracking_uri = setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
    arms, weights = resolve_arms(cfg.registry.model_name, cfg.serve.arms)
    return ServeSpec(model_name=cfg.registry.model_name, tracking_uri=tracking_uri, feast_repo=str(ws.feast_repo),
                     arms=arms, weights=weights, salt=cfg.serve.salt, max_candidates=cfg.serve.max_candidates,
                     env=dict(QUIET_ENV))


def start_serving(cfg: PipelineConfig, ray_address: str | None = None) -> str:
    """Deploy the A/B application and return its base URL (http://HOST:PORT/PREFIX)."""
    init_ray(ray_address)
    from ray import serve

    ws = Workspace.resolve(cfg.workspace)
    spec = serve_spec(cfg, ws)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(spec), name=APP_NAME, route_prefix=cfg.serve.route_prefix)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix}"
    ws.serve_state.write_text(json.dumps({"url": url, "arms": spec.arms, "weights": spec.weights}))
    return url


def stop_serving() -> None:
    """Shut Serve down entirely (controller and HTTP proxy), so a later start binds its own host and port."""
    from ray import serve

    serve.shutdown()


def app_from_args(args: dict):
    """Serve application builder for ``serve run`` / KubeRay ``serveConfigV2``:
    ``import_path: mixrec.serving.server:app_from_args`` with ``args: {config: /path/pipeline.yaml}``.
    Aliases resolve to versions here, once, when the application is built."""
    from mixrec.pipelines.config import PipelineConfig, load_config

    cfg = load_config(args["config"]) if args.get("config") else PipelineConfig()
    return build_app(serve_spec(cfg, Workspace.resolve(cfg.workspace)))
