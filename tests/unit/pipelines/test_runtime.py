"""The training resource check: a request that leaves Ray Data no CPU is refused before anything runs."""

import pytest

from mixrec.pipelines.config import ConfigError, PipelineConfig
from mixrec.pipelines.runtime import check_train_fits


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
