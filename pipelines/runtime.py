"""Starting (or joining) Ray with mixrec's defaults, and quieting the stack's noise (unless verbose: ``-v``)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "FEAST_USAGE": "False",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TQDM_DISABLE": "1",
    "PYTHONWARNINGS": "ignore",
    "MLFLOW_LOGGING_LEVEL": "ERROR",  # e.g. its CloudPickle-version warning when a model is loaded
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


_verbose = False
_quieted: set[str] = set()  # the QUIET_ENV keys quiet_environment set (not the user's own values)


def quiet_environment() -> None:
    """Usage reporting, progress bars and library warnings off for this process and the workers it starts;
    a variable the user set keeps its value."""
    for key, value in QUIET_ENV.items():
        if key not in os.environ and not _verbose:
            os.environ[key] = value
            _quieted.add(key)


def set_verbose() -> None:
    """``-v``: undo :func:`quiet_environment` and let Ray, Feast, GX and MLflow print what they print."""
    global _verbose
    _verbose = True
    for key in _quieted:
        os.environ.pop(key, None)
    _quieted.clear()
    import warnings

    warnings.resetwarnings()


def is_verbose() -> bool:
    return _verbose


def worker_env() -> dict[str, str]:
    """The environment of the workers of a private Ray instance: :data:`WORKER_ENV`, and quiet unless verbose."""
    return {**({} if _verbose else QUIET_ENV), **WORKER_ENV}


@contextmanager
def quiet_output() -> Iterator[None]:
    """Swallow what third-party code prints to stdout (Feast's coloured apply / materialize messages) unless
    verbose; exceptions still propagate."""
    if _verbose:
        yield
        return
    with redirect_stdout(io.StringIO()):
        yield


_started: dict[str, str | None] = {"dashboard_url": None}


def init_ray(address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None,
             dashboard: bool = False):
    """Join ``address`` (or $RAY_ADDRESS) when given, else start a private local instance.

    A local instance uses ``address="local"`` so that a `ray start` cluster elsewhere on the host is never
    joined by accident; its workers get :data:`QUIET_ENV` and :data:`WORKER_ENV`, and every one of its
    listeners (GCS, raylet, object manager, agents, workers) binds loopback (see :func:`_loopback_node`).
    ``dashboard``: a local instance also starts the Ray dashboard, on loopback only (:func:`dashboard_url` says
    where); off by default.
    """
    quiet_environment()
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env()}
    if address and _on_loopback(address):
        # An embedded instance of this host (e.g. the one `mixrec serve` started) runs its node on 127.0.0.1:
        # a driver that advertised the host's address would wait for a raylet there forever.
        with _loopback_node():
            ray.init(address=address, log_to_driver=_verbose, _node_ip_address="127.0.0.1")
    elif address:
        # Inside a Ray Job the job's runtime_env (shipped code, env vars) applies; don't override it.
        ray.init(address=address, log_to_driver=_verbose)
    else:
        with _loopback_node():
            context = ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
                               include_dashboard=dashboard, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                               _node_ip_address="127.0.0.1", log_to_driver=_verbose, configure_logging=True,
                               logging_level=logging.INFO if _verbose else logging.WARNING)
        if dashboard:
            url = context.address_info["webui_url"]
            _started["dashboard_url"] = url if url.startswith("http") else f"http://{url}"
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = False  # see WORKER_ENV
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not _verbose:
        for name in ("ray.data", "ray.train", "ray.tune", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return ray


def _on_loopback(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``, ``http://host:port``) names this host's loopback."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _loopback_node():
    """Let a local instance's node address be 127.0.0.1, so that its servers bind loopback only.

    Ray 2.60 replaces a loopback ``_node_ip_address`` with the host's routable address unless clusters are
    disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once when ray is imported), and binds GCS, raylet,
    workers and agents to that node address: with it, 11 listeners were off loopback here; with this, none.
    The switch only matters while the node starts (afterwards Ray reads the node's own address), so it is
    restored at once: a later join of a real cluster from this process must advertise a routable address.
    """
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled


# Ray Data reads and transforms with tasks of 1 CPU each (its default): a training run must leave at least that
# much of the instance free, or the workers wait forever for batches nobody can read.
DATA_TASK_CPUS = 1.0


def check_train_fits(num_workers: int, cpus_per_worker: float, total_cpus: float) -> None:
    """Refuse, before anything runs, a training request that leaves Ray Data no CPU to read with.

    ``total_cpus``: the instance's CPUs (``ray.cluster_resources()["CPU"]``). Raises ConfigError naming the
    settings. Without it, ``num_workers: 1, cpus_per_worker: 2`` on 2 CPUs hung silently in the Train step."""
    from .config import ConfigError

    reserved = num_workers * cpus_per_worker
    if reserved + DATA_TASK_CPUS > total_cpus:
        raise ConfigError(
            f"train.num_workers × train.cpus_per_worker = {num_workers} × {cpus_per_worker:g} = {reserved:g} CPUs "
            f"leaves {max(total_cpus - reserved, 0):g} of this Ray instance's {total_cpus:g} CPUs free, and Ray "
            f"Data needs {DATA_TASK_CPUS:g} to feed the workers: lower one of them (at most "
            f"{max(total_cpus - DATA_TASK_CPUS, 0):g} CPUs in all)")


# Ray's driver logs this once per process (core_worker.cc, at ERROR) when Ray Data starts the validation actor
# pool: a caution about restarts that mixrec cannot act on (ray-project/ray#53727).
RAY_ACTOR_ARGS_WARNING = "has constructor arguments in the object store"


@contextmanager
def drop_stderr_lines(*needles: str) -> Iterator[None]:
    """Hold back what is written to file descriptor 2 (C++ logs included) while the block runs, then pass on
    every line that contains none of ``needles``; unless verbose."""
    if _verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(n in line for n in needles)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def progress_mode() -> str:
    """How a command shows the progress of long steps: rich bars on a terminal, plain lines in a log."""
    return "bars" if sys.stdout.isatty() else "lines"


def dashboard_url() -> str | None:
    """The Ray dashboard this process started with :func:`init_ray` (``dashboard=True``), else None."""
    return _started["dashboard_url"]
