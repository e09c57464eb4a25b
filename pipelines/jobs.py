"""Submitting the pipeline to a Ray cluster as a Ray Job (``JobSubmissionClient``), and managing jobs.

The job's runtime_env ships the project code as the ``mixrec`` package (a staged copy of the five code
folders under one namespace, as ``py_modules``), so a cluster runs exactly the submitted code and imports it
the same way as a local run. The working directory carries the config; environment variables carry the
MLflow tracking URI and the Feast repo location. Token authentication (Ray's default) stays on: the client
reads the token from ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from .config import PipelineConfig, load_config
from .runtime import WORKER_ENV

CODE_FOLDERS = ("models", "features", "pipelines", "serving", "tuning", "cli")
EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache"]
CONFIG_NAME = "pipeline.yaml"


def repo_root() -> Path:
    """The folder holding the code folders (this file is pipelines/jobs.py in a source checkout)."""
    return Path(__file__).resolve().parents[1]


def client(address: str):
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def stage_package(destination: Path) -> Path:
    """Copy the code folders into ``destination/mixrec/<folder>``: the namespace package a job imports."""
    root = repo_root()
    package = destination / "mixrec"
    for folder in CODE_FOLDERS:
        shutil.copytree(root / folder, package / folder, ignore=shutil.ignore_patterns(*EXCLUDES))
    return package


def submit(config_path: Path, address: str, env: dict[str, str] | None = None,
           entrypoint_num_cpus: float = 0.0, agent_wait_s: float = 120.0) -> str:
    """Submit ``mixrec run`` with this config as a Ray Job; returns the job id."""
    from .prepare import check_model_config

    cfg: PipelineConfig = load_config(config_path)  # reject a bad config before anything is shipped
    check_model_config(cfg)
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0", **WORKER_ENV, **(env or {})}
    if cfg.registry.tracking_uri:
        env_vars.setdefault("MLFLOW_TRACKING_URI", cfg.registry.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mixrec-job-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        shutil.copy2(config_path, workdir / CONFIG_NAME)
        package = stage_package(Path(tmp) / "code")
        runtime_env = {"working_dir": str(workdir), "py_modules": [str(package)], "excludes": EXCLUDES,
                       "env_vars": env_vars}
        jobs_client = client(address)
        deadline = time.time() + agent_wait_s
        while True:
            try:
                return jobs_client.submit_job(
                    entrypoint=f"python -m mixrec.cli run {CONFIG_NAME}", runtime_env=runtime_env,
                    entrypoint_num_cpus=entrypoint_num_cpus, metadata={"mixrec_config": Path(config_path).name})
            except RuntimeError as err:
                # A cluster that just started answers "No available agent to submit job, please try again
                # later" until its job agents have registered: retry that, and only that, for a while.
                if "try again later" not in str(err) or time.time() > deadline:
                    raise
                time.sleep(2)


def wait(address: str, job_id: str, timeout_s: float = 3600, progress=None) -> str:
    """Poll until the job ends; returns its final status."""
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        current = status(address, job_id)
        if current != last and progress:
            progress(current)
        last = current
        if current in ("SUCCEEDED", "FAILED", "STOPPED"):
            return current
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still {last} after {timeout_s:.0f} s")


def list_jobs(address: str) -> list[dict]:
    return [{"job_id": j.submission_id, "status": str(j.status.value), "entrypoint": j.entrypoint,
             "message": j.message or ""} for j in client(address).list_jobs()]


def status(address: str, job_id: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return client(address).stop_job(job_id)
