"""Study analysis (no Ray): the power-law fit recovers a planted exponent; the ROI pick honours the budget."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mixrec.tuning.analysis import analyse, fit_power_law, fit_reducible, log_slope, plot


def test_fit_recovers_a_planted_exponent_with_an_interval():
    x = np.geomspace(1e3, 1e6, 6)
    loss = 0.8 * (x / x[0]) ** -0.35 + 0.4
    fit = fit_power_law(x, loss)
    assert fit["points"] == 6 and fit["note"] == ""
    assert fit["alpha"] == pytest.approx(0.35, abs=1e-3) and fit["c"] == pytest.approx(0.4, abs=1e-3)
    assert fit["alpha_low"] <= fit["alpha"] <= fit["alpha_high"]


def test_intervals_use_the_student_t_quantile_of_the_points_left_over():
    from scipy import stats

    x = np.geomspace(1e3, 1e5, 5)
    noise = np.array([0.004, -0.003, 0.002, -0.004, 0.003])
    fit = fit_power_law(x, 0.3 * (x / x[0]) ** -0.4 + 0.35 + noise)
    # 5 points, 3 parameters: t(2) = 4.30, where the normal quantile would give an interval 2.2x too narrow
    assert fit["alpha_high"] - fit["alpha"] == pytest.approx(stats.t.ppf(0.975, 2) * fit["alpha_se"])
    slope = log_slope(x, 0.5 * x ** -0.1 * np.exp(noise))
    res = stats.linregress(np.log(x), np.log(0.5 * x ** -0.1 * np.exp(noise)))
    assert slope["slope"] == pytest.approx(0.1, abs=0.01)
    assert slope["slope_high"] - slope["slope"] == pytest.approx(stats.t.ppf(0.975, 3) * res.stderr)
    assert fit["slope_low"] < fit["slope"] < fit["slope_high"]  # every fit carries the floor-free slope too


def test_a_pure_power_law_gives_its_exponent_as_the_log_log_slope():
    x = np.geomspace(1e3, 1e6, 6)
    slope = log_slope(x, 2.0 * x ** -0.25)
    assert slope["slope"] == pytest.approx(0.25) and slope["slope_high"] - slope["slope_low"] < 1e-6
    assert math.isnan(log_slope(x[:2], x[:2] ** -0.25)["slope"])


@pytest.mark.filterwarnings("ignore:Covariance of the parameters could not be estimated")
def test_too_few_points_give_no_fit_or_no_interval():
    two = fit_power_law(np.array([1.0, 2.0]), np.array([0.5, 0.4]))
    assert two["points"] == 2 and math.isnan(two["alpha"]) and "fewer than 3" in two["note"]
    x = np.array([1e3, 1e4, 1e5])
    three = fit_power_law(x, 0.5 * (x / 1e3) ** -0.3 + 0.3)
    assert np.isfinite(three["alpha"]) and math.isnan(three["alpha_low"]) and "no interval" in three["note"]


def _results() -> pd.DataFrame:
    rows = []
    for i, (params, loss) in enumerate([(1e3, 0.60), (1e4, 0.50), (1e5, 0.45), (1e6, 0.44)]):
        rows.append({"id": f"dnn{i}", "arch": "dnn", "kwargs": {"w": i}, "status": "finished", "parameters": params,
                     "training_flops": params * 100, "flops_per_example": params * 2, "valid_logloss": loss})
    rows.append({**rows[-1], "id": "failed", "status": "failed", "valid_logloss": math.nan})
    return pd.DataFrame(rows)


def test_analyse_fits_each_axis_and_picks_the_best_within_the_budget(tmp_path):
    analysis = analyse(_results(), flops_budget=5e4)
    assert set(analysis["fits"]["dnn"]) == {"parameters", "training_flops"}
    assert analysis["fits"]["dnn"]["parameters"]["points"] == 4  # the failed point is left out
    assert analysis["roi_pick"]["id"] == "dnn1" and analysis["roi_pick"]["kwargs"] == {"w": 1}
    assert analyse(_results(), flops_budget=None)["roi_pick"]["id"] == "dnn3"
    assert analyse(_results(), flops_budget=1.0)["roi_pick"] is None
    paths = plot(_results(), analysis, tmp_path)
    assert [p.name for p in paths] == ["scaling_parameters.png", "scaling_training_flops.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_non_embedding_parameters_are_an_axis_when_the_results_have_them(tmp_path):
    results = _results().assign(dense_parameters=lambda d: d["parameters"] / 10)
    analysis = analyse(results, flops_budget=None)
    assert set(analysis["fits"]["dnn"]) == {"parameters", "dense_parameters", "training_flops"}
    assert analysis["fits"]["dnn"]["dense_parameters"]["points"] == 4
    assert "scaling_dense_parameters.png" in [p.name for p in plot(results, analysis, tmp_path)]


def test_a_known_floor_gives_the_exponent_of_the_loss_above_it(tmp_path):
    x = np.geomspace(1e3, 1e5, 5)
    noise = np.array([0.02, -0.03, 0.01, -0.02, 0.03])
    fit = fit_reducible(x, 0.33 + 0.4 * x ** -0.3 * np.exp(noise), floor=0.33)
    assert fit["exponent"] == pytest.approx(0.3, abs=0.03) and fit["note"] == ""
    assert fit["exponent_low"] < 0.3 < fit["exponent_high"]
    below = fit_reducible(x, np.full(5, 0.32), floor=0.33)
    assert math.isnan(below["exponent"]) and "below the floor" in below["note"]
    results = _results()
    analysis = analyse(results, flops_budget=None, floor=0.40)
    assert analysis["bayes_logloss"] == 0.40
    # the planted losses fall towards 0.44, so above a 0.40 floor they fall, ever more slowly
    assert analysis["fits"]["dnn"]["parameters"]["reducible"]["exponent"] > 0
    names = [p.name for p in plot(results, analysis, tmp_path)]
    assert "scaling_reducible_parameters.png" in names and "scaling_parameters.png" in names
    assert "reducible" not in analyse(results, flops_budget=None)["fits"]["dnn"]["parameters"]
