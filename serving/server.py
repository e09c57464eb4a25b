"""Start, re-weight and stop the Serve application from a pipeline config: resolve aliases, bind to loopback."""

from __future__ import annotations

import json
import os

from mixrec.pipelines.config import ConfigError, PipelineConfig, parse_config
from mixrec.pipelines.registry import RegistryError, resolve_alias, setup_tracking
from mixrec.pipelines.runtime import QUIET_ENV, init_ray
from mixrec.pipelines.workspace import Workspace

from .app import ServeSpec, build_app, token_digest

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


def bearer_token_digest(cfg: PipelineConfig) -> str | None:
    """SHA-256 of the token in the environment variable ``serve.auth_token_env`` names (None: no auth)."""
    name = cfg.serve.auth_token_env
    if name is None:
        return None
    token = os.environ.get(name, "")
    if not token:
        raise ConfigError(f"serve.auth_token_env: environment variable {name} is unset or empty; "
                          f"set it to the bearer token, or remove serve.auth_token_env")
    return token_digest(token)


def serving_schema(cfg: PipelineConfig):
    """The config's dataset schema, which must name user and item keys: the ranker ranks items for a user."""
    from mixrec.pipelines.config import dataset_schema

    schema = dataset_schema(cfg)
    if not (schema.user_key and schema.item_key):
        raise ConfigError(f"serving ranks items for a user, but dataset {schema.name!r} declares no user and item "
                          f"keys: add `entities: {{user: {{key: ...}}, item: {{key: ...}}}}` to its schema file "
                          f"({cfg.data.schema_file}) and train again")
    return schema


def serve_spec(cfg: PipelineConfig, ws: Workspace) -> ServeSpec:
    tracking_uri = setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
    arms, weights = resolve_arms(cfg.registry.model_name, cfg.serve.arms)
    s = cfg.serve
    return ServeSpec(model_name=cfg.registry.model_name, tracking_uri=tracking_uri, feast_repo=str(ws.feast_repo),
                     arms=arms, weights=weights, salt=s.salt, max_candidates=s.max_candidates, env=dict(QUIET_ENV),
                     max_id=s.max_id, token_sha256=bearer_token_digest(cfg), ranker_replicas=s.ranker_replicas,
                     ranker_cpus=s.ranker_cpus, max_ongoing_requests=s.max_ongoing_requests,
                     max_queued_requests=s.max_queued_requests, retry_after_s=s.retry_after_s,
                     batch_max_size=s.batch_max_size, batch_wait_timeout_s=s.batch_wait_timeout_s,
                     item_cache=s.item_cache, item_cache_ttl_s=s.item_cache_ttl_s,
                     item_cache_check_s=s.item_cache_check_s, schema=serving_schema(cfg))


def _deploy(cfg: PipelineConfig, ws: Workspace) -> tuple[str, ServeSpec]:
    from ray import serve

    spec = serve_spec(cfg, ws)
    serve.run(build_app(spec), name=APP_NAME, route_prefix=cfg.serve.route_prefix)
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix}", spec


def _record_state(ws: Workspace, url: str, spec: ServeSpec) -> None:
    """serve.json: what `mixrec query` and `mixrec ab set-weights` need to find the running app."""
    import ray

    # Ray 2.60 turns token auth on for a new local cluster (token in ~/.ray/auth_token) but not for a process
    # joining by explicit address: whoever joins must set the same mode, so it is recorded here.
    state = {"url": url, "arms": spec.arms, "weights": spec.weights,
             "ray_address": ray.get_runtime_context().gcs_address, "ray_auth_mode": os.environ.get("RAY_AUTH_MODE")}
    tmp = ws.serve_state.with_name(f".{ws.serve_state.name}.tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(ws.serve_state)


def start_serving(cfg: PipelineConfig, ray_address: str | None = None) -> str:
    """Deploy the A/B application and return its base URL (http://HOST:PORT/PREFIX)."""
    init_ray(ray_address)
    from ray import serve

    ws = Workspace.resolve(cfg.workspace)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    url, spec = _deploy(cfg, ws)
    _record_state(ws, url, spec)
    return url


def set_weights(cfg: PipelineConfig, weights: dict[str, float], ray_address: str | None = None) -> ServeSpec:
    """Change the served arms and their weights live: aliases are resolved again and the application is
    deployed again. Rankers whose version is unchanged keep running (their constructor argument does not
    depend on the weights); the splitter only gets a new ``user_config`` (``reconfigure``) unless the set of
    arms changed, so requests keep flowing. ``ray_address``: the Ray instance that serves (default: the
    one recorded in the workspace's serve.json, else the current/local one)."""
    ws = Workspace.resolve(cfg.workspace)
    if ray_address is None and ws.serve_state.exists():
        state = json.loads(ws.serve_state.read_text())
        ray_address = state.get("ray_address")
        if state.get("ray_auth_mode"):
            os.environ.setdefault("RAY_AUTH_MODE", state["ray_auth_mode"])
    data = cfg.to_dict()
    data["serve"]["arms"] = dict(weights)
    updated = parse_config(data, "(ab set-weights)")
    init_ray(ray_address)
    setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
    missing = [alias for alias, w in weights.items() if w > 0 and _alias_missing(cfg.registry.model_name, alias)]
    if missing:
        raise RegistryError(f"model {cfg.registry.model_name!r} has no alias {missing}: cannot route traffic to it")
    url, spec = _deploy(updated, ws)
    _record_state(ws, url, spec)
    return spec


def _alias_missing(model_name: str, alias: str) -> bool:
    try:
        resolve_alias(model_name, alias)
    except RegistryError:
        return True
    return False


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
