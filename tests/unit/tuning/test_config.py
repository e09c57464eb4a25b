"""Study files (no Ray): every bad field is named before any trial starts; points have stable ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixrec.pipelines.config import ConfigError
from mixrec.tuning.config import StudyConfig, load_study, points

STUDY = {"name": "tiny", "architectures": {"dnn": {"grid": {"hidden_dims": [[8], [16]]}}}}


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("overrides, match", [
    ({"architectures": {"nope": {"grid": {"d_model": [8]}}}}, "architectures.nope: unknown architecture; allowed: "),
    ({"architectures": {"dnn": {"grid": {}}}}, "architectures.dnn.grid: empty"),
    ({"architectures": {"dnn": {"grid": {"hidden_dims": []}}}}, "architectures.dnn.grid.hidden_dims: empty list"),
    ({"architectures": {"rankmixer": {"grid": {"d_model": [30]}, "fixed": {"num_tokens": 4}}}},
     r"architectures.rankmixer: size .* is not accepted: d_model \(30\) must be divisible by num_tokens"),
    ({"architectures": {"dnn": {"grid": {"bogus": [1]}}}}, r"unknown keyword\(s\) \['bogus'\]"),
    ({"architectures": {}}, "architectures"),
    ({"data_fractions": [0.0]}, "data_fractions: .*fractions in \\(0, 1\\]"),
    ({"epochs": 0, "name": "bad name"}, "(?s)epochs.*name|name.*epochs"),
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
])
def test_bad_fields_are_named(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_study(_write(tmp_path, yaml.safe_dump({**STUDY, **overrides})))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_study(_write(tmp_path, "name: [unclosed"))


def test_points_cover_the_grid_with_stable_ids():
    study = StudyConfig.model_validate({
        "name": "s", "data_fractions": [0.5, 1.0],
        "architectures": {"rankmixer": {"fixed": {"num_tokens": 2}, "grid": {"d_model": [8, 16], "num_layers": [1]}}}})
    got = points(study)
    assert [p["id"] for p in got] == ["rankmixer[d_model=8-num_layers=1]@0.5", "rankmixer[d_model=8-num_layers=1]@1",
                                      "rankmixer[d_model=16-num_layers=1]@0.5", "rankmixer[d_model=16-num_layers=1]@1"]
    assert got[0]["kwargs"] == {"num_tokens": 2, "d_model": 8, "num_layers": 1} and got[0]["fraction"] == 0.5


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[3] / "configs").glob("study_*.yaml")),
                         ids=lambda p: p.name)
def test_the_shipped_studies_parse_and_every_point_builds(path):
    study = load_study(path)
    assert len(points(study)) >= 2


@pytest.mark.parametrize("lrs, epochs, asha", [([0.001, 0.003], 2, True), ([0.001, 0.003], 1, False),
                                               ([0.003], 3, False), ([], 3, False)])
def test_asha_only_where_it_can_stop_a_trial_early(lrs, epochs, asha):
    from mixrec.tuning.study import uses_asha

    study = StudyConfig.model_validate({**STUDY, "learning_rates": lrs, "epochs": epochs})
    assert uses_asha(study) is asha
