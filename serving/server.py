"""Start, re-weight and stop Serve applications from a pipeline config: resolve aliases, bind to loopback.

Applications are independent: each has its own name and route prefix (``serve.app_name``,
``serve.route_prefix``) behind the one HTTP proxy of the Ray instance, and stopping one deletes only it.
Importing this module imports no Ray (see :func:`mixrec.serving.state.join_recorded_ray`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from mixrec.pipelines.config import ConfigError, PipelineConfig, ServeConfig, dataset_schema
from mixrec.pipelines.registry import CHAMPION, RegistryError, resolve_alias, setup_tracking
from mixrec.pipelines.runtime import QUIET_ENV, init_ray
from mixrec.pipelines.workspace import Workspace

from .auth import configured_token_digest
from .resolved import ResolvedServe
from .state import ServerUnreachable, join_recorded_ray, record_state, running_state

log = logging.getLogger(__name__)
APP_NAME = ServeConfig().app_name  # the default application, as KubeRay's serveConfigV2 names it


def resolve_arms(model_name: str, weights: dict[str, float]) -> tuple[dict[str, str], dict[str, float]]:
    """Aliases -> versions, once, at start. The champion alias must exist when it is an arm (else
    RegistryError: nothing trustworthy to serve). Another alias that is missing, or that points at a version an
    earlier arm already serves (a first model is champion and challenger at once), folds its weight into that
    arm: champion gets 100 % while there is no distinct challenger."""
    arms: dict[str, str] = {}
    merged: dict[str, float] = {}
    for alias in sorted(weights, key=lambda a: (a != CHAMPION, a)):
        try:
            version = resolve_alias(model_name, alias)
        except RegistryError:
            if alias == CHAMPION:
                raise RegistryError(f"model {model_name!r} has no {CHAMPION!r} alias: refusing to serve without "
                                    f"one; train first, or `mixrec promote VERSION`") from None
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


def loadable_arms(model_name: str, arms: dict[str, str], weights: dict[str, float]
                  ) -> tuple[dict[str, str], dict[str, float], tuple[str, ...]]:
    """Load each arm's version once here, before any replica does: an arm that cannot be loaded is dropped
    (its weight goes to the first arm, the champion) with a warning that ``/arms`` shows; when the first arm
    cannot be loaded either, RegistryError (nothing to serve)."""
    from mixrec.pipelines.pyfunc import load_ranker

    first = next(iter(arms))
    warnings = []
    for arm, version in list(arms.items()):
        try:
            load_ranker(model_name, version)
        except Exception as err:  # whatever the artifact store or the model's loader raises
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            if arm == first:
                raise RegistryError(f"model {model_name!r} version {version} ({arm}) cannot be loaded: {reason}") from None
            warnings.append(f"arm {arm!r} (version {version}) dropped: cannot be loaded: {reason}")
            log.warning("%s; %s takes its traffic", warnings[-1], first)
            del arms[arm]
            weights = {a: w + weights[arm] if a == first else w for a, w in weights.items() if a != arm}
    if sum(weights.values()) <= 0:
        weights = {arm: 1.0 for arm in weights}
    return arms, weights, tuple(warnings)


def serving_schema(cfg: PipelineConfig):
    """The config's dataset schema, which must name user and item keys: the ranker ranks items for a user."""
    schema = dataset_schema(cfg)
    if not (schema.user_key and schema.item_key):
        raise ConfigError(f"serving ranks items for a user, but dataset {schema.name!r} declares no user and item "
                          f"keys: add `entities: {{user: {{key: ...}}, item: {{key: ...}}}}` to its schema file "
                          f"({cfg.data.schema_file}) and train again")
    return schema


def resolve_serve(cfg: PipelineConfig, ws: Workspace, versions: dict[str, str] | None = None) -> ResolvedServe:
    """The config's serve section with everything resolved now: aliases, tracking URI, token, schema.
    ``versions`` (arm -> model version) pins the arms instead of resolving the aliases (an A/B gate serves a
    candidate that no alias names yet); their weights come from ``serve.arms``."""
    tracking_uri = setup_tracking(cfg.registry.tracking_uri, cfg.registry.experiment, ws)
    if versions is None:
        arms, weights = resolve_arms(cfg.registry.model_name, cfg.serve.arms)
    else:
        arms, weights = dict(versions), {arm: cfg.serve.arms.get(arm, 0.0) for arm in versions}
    arms, weights, warnings = loadable_arms(cfg.registry.model_name, arms, weights)
    return ResolvedServe(serve=cfg.serve, model_name=cfg.registry.model_name, arms=arms, weights=weights,
                         tracking_uri=tracking_uri, workspace=ws, schema=serving_schema(cfg), env=dict(QUIET_ENV),
                         token_sha256=configured_token_digest(cfg.serve), warnings=warnings)


def _http_proxy(serve_cfg: ServeConfig) -> tuple[str, int]:
    """Where Serve's HTTP proxy listens. A Ray instance has one, serving every application on the host and port
    it was started with: a running one is reused whatever ``serve.port`` says, else it starts on
    ``serve.host:serve.port``."""
    from ray import serve
    from ray.serve.context import _get_global_client  # the running proxy's options: no public API in Ray 2.60

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
        return serve_cfg.host, serve_cfg.port
    return client.http_config.host, client.http_config.port


def deploy(cfg: PipelineConfig, ray_address: str | None = None,
           versions: dict[str, str] | None = None) -> tuple[str, ResolvedServe]:
    """Deploy (or redeploy) the config's application, aliases resolved now (or ``versions`` pinned, see
    :func:`resolve_serve`); returns its base URL (http://HOST:PORT/PREFIX) and what it was built from. Other
    applications keep running; nothing is recorded in the workspace (:func:`start_serving` does)."""
    plan = resolve_serve(cfg, Workspace.resolve(cfg.workspace), versions)  # first: a refusal starts no Ray
    init_ray(ray_address)
    from ray import serve

    from .app import build_app

    host, port = _http_proxy(cfg.serve)
    name, prefix = cfg.serve.app_name, cfg.serve.route_prefix
    retiring = _retiring_rankers(name, plan)
    if retiring:  # phase 1: the new graph, the dropped rankers still up until the old splitter drained
        serve.run(build_app(plan, retiring), name=name, route_prefix=prefix)
        _wait_for_drained_splitter(name)
    serve.run(build_app(plan), name=name, route_prefix=prefix)
    return f"http://{host}:{port}{prefix}", plan


def _retiring_rankers(app_name: str, plan: ResolvedServe) -> dict[str, tuple[str, str]]:
    """Ranker deployments the running application has and ``plan`` drops: name -> (arm, version)."""
    from ray import serve

    from .app import ranker_name

    app = serve.status().applications.get(app_name)
    keep = {ranker_name(arm, version) for arm, version in plan.arms.items()}
    retiring = {}
    for name in (app.deployments if app else {}):
        if name.startswith("ranker_") and name not in keep:
            arm, _, version = name.removeprefix("ranker_").rpartition("_v")
            retiring[name] = (arm, version)
    return retiring


def _wait_for_drained_splitter(app_name: str, timeout_s: float = 120.0) -> None:
    """Until the splitter runs only replicas of the version just deployed (the previous ones drained)."""
    import time

    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = serve.status().applications[app_name].deployments["Splitter"].replica_states
        if set(states) <= {"RUNNING"}:
            return
        time.sleep(0.2)
    log.warning("the previous splitter replicas of %s did not drain in %.0fs", app_name, timeout_s)


def start_serving(cfg: PipelineConfig, ray_address: str | None = None) -> str:
    """Deploy the A/B application, record it in the workspace's serve.json (and its Serve config file,
    serve_config.yaml), and return its base URL."""
    from .serve_config import write_serve_config

    url, plan = deploy(cfg, ray_address)
    record_state(Workspace.resolve(cfg.workspace), url, plan)
    write_serve_config(plan)  # the same application as a Serve config file, for `serve run/deploy`
    return url


def set_weights(workspace: Workspace | str | None, weights: dict[str, float]) -> ResolvedServe:
    """Change the traffic weights of the server recorded in the workspace's serve.json, and nothing else: the
    application is redeployed from the plan it recorded (same versions, token, salt, limits, replicas, route),
    so only the splitter's ``user_config`` changes (``reconfigure``: requests keep flowing, rankers keep
    running). Served arms left out get weight 0. Bad weights (NaN, infinite, negative, all zero, a sum that
    overflows, an arm not served) raise ValueError before anything is contacted; a missing or dead server
    raises :class:`ServerUnreachable` within seconds. Joins the Ray instance serve.json records."""
    from .app import build_app
    from .splitter import normalize_weights

    ws = Workspace.resolve(workspace) if not isinstance(workspace, Workspace) else workspace
    normalize_weights(weights)
    state = running_state(ws)
    plan = ResolvedServe.from_args(state["plan"])
    unknown = sorted(set(weights) - set(plan.arms))
    if unknown:
        raise ValueError(f"weights: arm(s) {unknown} not served; served arms: {sorted(plan.arms)} (serve others "
                         "with `mixrec serve`)")
    plan = replace(plan, weights={arm: float(weights.get(arm, 0.0)) for arm in plan.arms})
    normalize_weights(plan.weights)
    address = join_recorded_ray(ws)
    ray = init_ray(address)
    if ray.get_runtime_context().gcs_address != address:
        raise ServerUnreachable(f"this process is attached to the Ray instance at "
                                f"{ray.get_runtime_context().gcs_address}, the server runs at {address}")
    from ray import serve

    serve.run(build_app(plan), name=plan.serve.app_name, route_prefix=plan.serve.route_prefix)
    record_state(ws, state["url"], plan)
    return plan


def stop_serving(app: PipelineConfig | str = APP_NAME) -> None:
    """Delete one application (a config's ``serve.app_name``, or a name); other applications keep serving.
    Once none remains, Serve shuts down entirely (controller and HTTP proxy), so a later start binds its own
    host and port."""
    import ray

    if not ray.is_initialized():
        return
    from ray import serve

    name = app if isinstance(app, str) else app.serve.app_name
    if name in serve.status().applications:
        serve.delete(name)
    if not serve.status().applications:
        serve.shutdown()


def app_from_args(args: dict):
    """Serve application builder for ``serve run`` / KubeRay ``serveConfigV2``:
    ``import_path: mixrec.serving.server:app_from_args`` with ``args: {config: /path/pipeline.yaml}``.
    Aliases resolve to versions here, once, when the application is built."""
    from mixrec.pipelines.config import load_config

    from .app import build_app

    cfg = load_config(args["config"]) if args.get("config") else PipelineConfig()
    return build_app(resolve_serve(cfg, Workspace.resolve(cfg.workspace)))
