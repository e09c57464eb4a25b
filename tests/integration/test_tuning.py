"""`mixrec tune`: a small scaling study through Ray Tune + Ray Train, fits (also above the synthetic data's Bayes
logloss) and plots logged to MLflow; bad study files rejected before any trial; a diverging trial fails alone
and the study goes on; --resume skips done points."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
import yaml

from mixrec.pipelines.config import ConfigError
from mixrec.tuning.study import RESULTS, load_study, run_study

pytestmark = pytest.mark.integration


def write(tmp_path, **overrides) -> str:
    spec = {
        "name": "tiny",
        "pipeline": {"workspace": str(tmp_path / "ws"),
                     "data": {"num_events": 3000, "num_users": 100, "num_items": 60, "days": 3, "seed": 4},
                     "train": {"num_workers": 1, "batch_size": 256}},
        "architectures": {"dnn": {"grid": {"hidden_dims": [[8], [16]]}},
                          "rankmixer": {"fixed": {"num_tokens": 2, "num_layers": 1}, "grid": {"d_model": [8, 16]}}},
        "epochs": 1,
        "flops_budget": 1e9,
    }
    spec.update(overrides)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("overrides, match", [
    ({"architectures": {"nope": {"grid": {"d_model": [8]}}}}, "architectures.nope: unknown architecture"),
    ({"architectures": {"dnn": {"grid": {}}}}, "architectures.dnn.grid: empty"),
    ({"architectures": {"dnn": {"grid": {"hidden_dims": []}}}}, "architectures.dnn.grid.hidden_dims: empty"),
    ({"architectures": {"rankmixer": {"grid": {"d_model": [30]}, "fixed": {"num_tokens": 4}}}}, "d_model"),
    ({"architectures": {}}, "architectures"),
    ({"data_fractions": [0.0]}, "data_fractions"),
])
def test_bad_study_is_rejected_before_any_trial(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_study(write(tmp_path, **overrides))


def test_small_study_fits_plots_and_survives_a_failed_point(ray_session, tmp_path):
    path = write(tmp_path, architectures={"dnn": {"grid": {"hidden_dims": [[4], [16], [64]]}}},
                 learning_rates=[0.003])
    out = run_study(load_study(path), progress=lambda _: None)
    results = out["results"]
    assert len(results) == 3 and (results["status"] == "finished").all()
    assert results["parameters"].is_monotonic_increasing and (results["training_flops"] > 0).all()
    assert (results["dense_parameters"] < results["parameters"]).all()  # the embedding table left out
    fit = out["analysis"]["fits"]["dnn"]["parameters"]
    assert fit["points"] == 3 and fit["note"]  # 3 points: a fit, no interval
    assert out["analysis"]["roi_pick"]["arch"] == "dnn"
    axes = ("parameters", "dense_parameters", "training_flops")
    assert {p.name for p in out["plots"]} == {f"scaling_{a}.png" for a in axes} | {
        f"scaling_reducible_{a}.png" for a in axes}
    # synthetic data: the generator's Bayes logloss is the floor, and the loss above it is fitted too
    floor = out["analysis"]["bayes_logloss"]
    assert 0 < floor < results["valid_logloss"].min()
    assert fit["reducible"]["note"] == "" and math.isfinite(fit["reducible"]["exponent"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"])}
    assert {"results.csv", "results.parquet", "analysis.json", "scaling_parameters.png",
            "scaling_reducible_parameters.png"} <= artifacts
    assert mlflow.get_run(out["run_id"]).data.metrics["bayes_logloss"] == pytest.approx(floor)

    # A point whose every trial diverges is recorded as failed with its reason; finished points are kept.
    study = load_study(path).model_copy(update={"learning_rates": [float("inf")]})  # NaN loss at step 2
    study.architectures["dnn"].grid["hidden_dims"].append([8])
    out = run_study(study, resume=True, progress=lambda _: None)
    rows = [json.loads(line) for line in (out["out_dir"] / RESULTS).read_text().splitlines()]
    assert len(rows) == 4  # the 3 finished points were not run again
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "diverged" in failed[0]["error"]
