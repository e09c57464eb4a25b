"""The pipeline config: defaults, the sample file, and a clear error per bad field."""

from pathlib import Path

import pytest

from mixrec.pipelines.config import ConfigError, PipelineConfig, TrainConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[3]


def test_defaults_fit_two_cores():
    cfg = PipelineConfig()
    assert cfg.train.num_workers * cfg.train.cpus_per_worker < 2, "leave a CPU for Ray Data on 2 cores"
    assert cfg.serve.host == "127.0.0.1"


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("study_")),
                         ids=lambda p: p.name)
def test_sample_configs_load(path):
    assert isinstance(load_config(path), PipelineConfig)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("study_*.yaml")), ids=lambda p: p.name)
def test_sample_studies_load(path):
    from mixrec.tuning.config import load_study, points

    assert len(points(load_study(path))) >= 4


def test_every_bad_field_is_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"num_workers": 0, "epochs": "many"}, "serve": {"arms": {}}, "bogus": 1})
    msg = str(err.value)
    for where in ("train.num_workers", "train.epochs", "serve.arms", "bogus"):
        assert where in msg, msg


def test_splits_must_leave_train():
    with pytest.raises(ConfigError, match="valid_fraction"):
        parse_config({"preprocess": {"valid_fraction": 0.45, "test_fraction": 0.4}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_env_references_are_expanded_and_unset_ones_named(tmp_path, monkeypatch):
    path = tmp_path / "team.yaml"
    path.write_text("registry:\n  tracking_uri: http://${MIXREC_TEST_HOST}:5000\n")
    monkeypatch.setenv("MIXREC_TEST_HOST", "mlflow")
    assert load_config(path).registry.tracking_uri == "http://mlflow:5000"
    monkeypatch.delenv("MIXREC_TEST_HOST")
    with pytest.raises(ConfigError, match="MIXREC_TEST_HOST"):
        load_config(path)


@pytest.mark.parametrize("model, match", [({"name": "nope"}, "unknown model 'nope'"),
                                          ({"name": "rankmixer", "kwargs": {"d_model": 30, "num_tokens": 4}}, "d_model"),
                                          ({"name": "dnn", "kwargs": {"bogus": 1}}, "bogus")])
def test_bad_model_config_is_rejected_before_any_work(model, match):
    from mixrec.pipelines.prepare import check_model_config

    with pytest.raises(ConfigError, match=match):
        check_model_config(parse_config({"model": model}))


def test_batch_size_is_global_and_splits_over_workers():

    assert TrainConfig(num_workers=4, batch_size=1024).worker_batch_size == 256
    assert TrainConfig(num_workers=1, batch_size=1024).worker_batch_size == 1024


def test_worker_threads_default_to_whole_cpus_and_can_be_set():
    assert TrainConfig(cpus_per_worker=0.5).worker_threads == 1
    assert TrainConfig(num_workers=1, cpus_per_worker=2.5).worker_threads == 2
    assert TrainConfig(num_workers=1, cpus_per_worker=1, torch_threads=2).worker_threads == 2
    with pytest.raises(ValueError, match="torch_threads"):
        TrainConfig(torch_threads=0)
    with pytest.raises(ConfigError, match=r"train: .*batch_size 1000 .*num_workers 3"):
        parse_config({"train": {"num_workers": 3, "batch_size": 1000}})


def test_max_grad_norm_must_be_positive():
    assert TrainConfig().max_grad_norm == 10.0
    assert TrainConfig(max_grad_norm=None).max_grad_norm is None
    with pytest.raises(ValueError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=0)
