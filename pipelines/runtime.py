"""Starting (or joining) Ray with mixrec's defaults, and quieting the stack's noise."""

from __future__ import annotations

import logging
import os

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "FEAST_USAGE": "False",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TQDM_DISABLE": "1",
    "PYTHONWARNINGS": "ignore",
}


# Ray workers: Arrow allocates through malloc instead of its jemalloc pool, which kept each long-lived Ray
# Data worker's freed batch memory (1.5 GiB of one worker's USS after 2M rows; 0.7 GiB with these, measured
# with bench/ingest.py), and glibc keeps two arenas, not one per thread.
# RAY_DATA_USE_DATASOURCE_V2=0: Ray 2.60's default Parquet reader (DataSourceV2) starts a fresh FooterReader
# actor for every execution, 2-4 s of wall time on 2 cores per read of even a 4,000-row file (0.07 s with
# the V1 reader; bench/ray_data_read.py). Every validation, preprocessing pass and training epoch reads Parquet.
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: the Train V2 controller advances its state machine once per poll (2 s by
# default); 0.2 s takes about 5 s off every fit (a no-op 2-worker fit: 16 s -> 11 s on 2 cores).
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2", "RAY_DATA_USE_DATASOURCE_V2": "0",
              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


_started: dict[str, str | None] = {"dashboard_url": None}


def init_ray(address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None,
             dashboard: bool = False):
    """Join ``address`` (or $RAY_ADDRESS) when given, else start a private local instance.

    A local instance uses ``address="local"`` so that a `ray start` cluster elsewhere on the host is never
    joined by accident; its workers get :data:`QUIET_ENV` and :data:`WORKER_ENV`. ``dashboard``: a local
    instance also starts the Ray dashboard, on loopback only (:func:`dashboard_url` says where); off by default.
    """
    quiet_environment()
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {**QUIET_ENV, **WORKER_ENV}}
    if address:
        # Inside a Ray Job the job's runtime_env (shipped code, env vars) applies; don't override it.
        ray.init(address=address, log_to_driver=False)
    else:
        context = ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
                           include_dashboard=dashboard, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                           log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
        if dashboard:
            url = context.address_info["webui_url"]
            _started["dashboard_url"] = url if url.startswith("http") else f"http://{url}"
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = False  # see WORKER_ENV
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.train", "ray.tune", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return ray


def dashboard_url() -> str | None:
    """The Ray dashboard this process started with :func:`init_ray` (``dashboard=True``), else None."""
    return _started["dashboard_url"]
