"""Ray start-up helpers: the quiet defaults (stderr lines held back and filtered, C-level writes included;
Feast-style prints swallowed; a user's own variable kept) and the training resource check (a request that leaves
Ray Data no CPU is refused before anything runs)."""

from __future__ import annotations

import os

import pytest

from mixrec.pipelines import runtime
from mixrec.pipelines.config import ConfigError, PipelineConfig
from mixrec.pipelines.runtime import check_train_fits


def test_dropped_stderr_lines_are_filtered_at_the_file_descriptor(capfd):
    with runtime.drop_stderr_lines(runtime.RAY_ACTOR_ARGS_WARNING):
        os.write(2, b"keep me\n[E core_worker.cc:2146] Actor X has constructor arguments in the object store and\n")
        os.write(2, b"and me\n")
    err = capfd.readouterr().err
    assert err == "keep me\nand me\n"


def test_quiet_output_swallows_prints(capsys):
    with runtime.quiet_output():
        print("\x1b[1mDeploying infrastructure\x1b[0m")
    print("ours")
    assert capsys.readouterr().out == "ours\n"


def test_quiet_environment_keeps_a_users_own_value(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "0")
    monkeypatch.setenv("FEAST_USAGE", "set")  # recorded, so the teardown restores the original state
    monkeypatch.delenv("FEAST_USAGE")
    runtime.quiet_environment()
    assert os.environ["TQDM_DISABLE"] == "0" and os.environ["FEAST_USAGE"] == "False"
    assert runtime.worker_env()["MALLOC_ARENA_MAX"] == "2"


def test_verbose_undoes_the_quiet_defaults_in_a_fresh_process():
    """`mixrec -v`: in its own interpreter, because verbosity is process-wide."""
    import subprocess
    import sys

    probe = ("import os; from mixrec.pipelines import runtime; runtime.quiet_environment(); "
             "quiet = 'TQDM_DISABLE' in os.environ; runtime.set_verbose(); runtime.quiet_environment(); "
             "with_v = 'TQDM_DISABLE' in os.environ\n"
             "with runtime.drop_stderr_lines('object store'): os.write(2, b'has constructor arguments in the object store\\n')\n"
             "print(quiet, with_v, runtime.worker_env().get('FEAST_USAGE'))")
    env = {k: v for k, v in os.environ.items() if k not in runtime.QUIET_ENV}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "False", "None"] and "object store" in out.stderr


@pytest.mark.parametrize("workers, cpus, total", [(1, 2.0, 2.0), (2, 0.75, 2.0), (4, 1.0, 4.0)])
def test_a_request_that_starves_ray_data_is_refused_naming_the_settings(workers, cpus, total):
    with pytest.raises(ConfigError) as err:
        check_train_fits(workers, cpus, total)
    message = str(err.value)
    assert "train.num_workers" in message and "train.cpus_per_worker" in message
    assert "\n" not in message


@pytest.mark.parametrize("workers, cpus, total", [(2, 0.5, 2.0), (1, 1.0, 2.0), (3, 1.0, 4.0)])
def test_a_request_that_leaves_a_cpu_for_ray_data_passes(workers, cpus, total):
    check_train_fits(workers, cpus, total)


def test_the_defaults_fit_a_two_core_machine():
    train = PipelineConfig().train
    check_train_fits(train.num_workers, train.cpus_per_worker, 2.0)


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6380", True), ("ray://127.0.0.1:10001", True), ("http://localhost:8265", True), ("[::1]:6380", True),
    ("10.0.0.5:6380", False), ("ray://head.example:10001", False), ("auto", False)])
def test_loopback_addresses_are_recognised(address, loopback):
    assert runtime._on_loopback(address) is loopback
