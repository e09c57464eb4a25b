"""The Makefile's torch index choice (`make -n`: nothing is installed): pip's own index when pip names one,
else the CPU wheels; an explicit URL (the CUDA build) wins; `pip` defers to pip whatever it says."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPU = "--index-url https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def torch_install_line(tmp_path, *args: str, **pip_env: str) -> str:
    # No pip configuration but what the test gives: no config files, no PIP_* variables of this machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, **pip_env})
    out = subprocess.run(["make", "-n", "-B", "install", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    return next(line for line in out.splitlines() if "torch==2.13.0" in line)


def test_cpu_wheels_when_pip_names_no_index(tmp_path):
    assert torch_install_line(tmp_path).endswith(CPU)


def test_pips_own_index_when_it_names_one(tmp_path):
    assert "--index-url" not in torch_install_line(tmp_path, PIP_INDEX_URL="file:///srv/mirror/simple")
    assert "--index-url" not in torch_install_line(tmp_path, PIP_FIND_LINKS=str(tmp_path))


def test_explicit_index_and_pip(tmp_path):
    cuda = "https://download.pytorch.org/whl/cu128"
    assert torch_install_line(tmp_path, f"TORCH_INDEX={cuda}").endswith(f"--index-url {cuda}")
    assert "--index-url" not in torch_install_line(tmp_path, "TORCH_INDEX=pip")
