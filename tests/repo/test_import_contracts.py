"""The layering of pyproject.toml's import contracts holds, and the check fails when an import breaks it.

``lint-imports`` (import-linter) reads the contracts from pyproject.toml: cli > serving | tuning > pipelines >
features > models, and models imports neither Ray, MLflow nor Feast.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ("cli", "serving", "tuning", "pipelines", "features", "models")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run([*command, str(config), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_code_keeps_every_import_contract():
    proc = _lint_imports(ROOT / "pyproject.toml", ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for contract in CONTRACTS:
        assert f"{contract['name']} KEPT" in proc.stdout, proc.stdout


def _copy_as(namespace: str, destination: Path) -> Path:
    """The code folders as the namespace package ``namespace``, every ``mixrec.`` import renamed to it."""
    package = destination / namespace
    for folder in CODE_FOLDERS:
        shutil.copytree(ROOT / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for source in package.rglob("*.py"):
        source.write_text(source.read_text().replace("mixrec.", f"{namespace}."))
    config = destination / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text().replace("mixrec.", f"{namespace}."))
    return config


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("models/dnn.py", "import ray", "models-pure-pytorch"),
    ("models/dnn.py", "import mlflow.pyfunc", "models-pure-pytorch"),
    ("features/schema.py", "from brokenrec.serving import splitter", "layers"),
    ("pipelines/config.py", "import brokenrec.tuning.cli", "layers"),
    ("serving/splitter.py", "from brokenrec.cli import app", "layers"),
    ("serving/splitter.py", "from brokenrec.tuning import study", "layers"),
    ("models/layers.py", "from brokenrec.models import dnn", "no-module-cycles"),
], ids=lambda v: str(v).replace(" ", "_"))
def test_an_import_against_the_layers_fails_the_check(tmp_path, module, line, contract):
    """A copy of the code with one import against the contracts: lint-imports exits non-zero, names the
    broken contract and the offending import."""
    config = _copy_as("brokenrec", tmp_path)
    target = tmp_path / "brokenrec" / module
    target.write_text(target.read_text() + f"\n{line}  # broken on purpose\n")
    proc = _lint_imports(config, tmp_path)
    assert proc.returncode != 0, proc.stdout
    name = next(c["name"] for c in CONTRACTS if c["id"] == contract).replace("mixrec.", "brokenrec.")
    assert f"{name} BROKEN" in proc.stdout, proc.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    # layers/forbidden name the importing module in full; a cycle is named by its edges within the package
    assert f"brokenrec.{importer} ->" in proc.stdout or f".{importer.rsplit('.', 1)[1]} ->" in proc.stdout, proc.stdout
