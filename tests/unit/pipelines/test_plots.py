"""The run's figures: thinned curves, quantile-binned calibration, the training curve's two axes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from mixrec.pipelines.plots import calibration_figure, roc_figure, thin, training_curve_figure


def test_thin_keeps_the_ends_and_at_most_max_points():
    x = np.arange(10_000, dtype=float)
    tx, ty = thin(x, x * 2, 100)
    assert len(tx) <= 100 and tx[0] == 0 and tx[-1] == 9_999 and np.array_equal(ty, tx * 2)
    assert len(thin(x[:5], x[:5], 100)[0]) == 5


def test_calibration_points_follow_the_observed_rate_per_bin():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.01, 0.5, 50_000)
    labels = (rng.uniform(size=probs.size) < probs).astype(np.float32)  # calibrated by construction
    fig = calibration_figure(labels, probs, bins=10)
    predicted, observed = fig.axes[0].lines[0].get_data()
    assert len(predicted) == 10 and np.allclose(predicted, observed, atol=0.03)
    plt.close(fig)


def test_roc_figure_is_thinned_and_names_the_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 20_000)
    fig = roc_figure(labels, labels * 0.3 + rng.uniform(size=labels.size), max_points=500)
    assert len(fig.axes[0].lines[0].get_xdata()) <= 500 and "AUC" in fig.axes[0].lines[0].get_label()
    plt.close(fig)


def test_training_curve_puts_aucs_on_the_right_axis():
    fig = training_curve_figure({"train_loss": [(1, 0.5), (0, 0.6)], "valid_auc": [(0, 0.7), (1, 0.72)],
                                 "valid_logloss": []})
    loss_ax, auc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train_loss"]
    assert list(loss_ax.lines[0].get_xdata()) == [0, 1]  # sorted by epoch
    assert [line.get_label() for line in auc_ax.lines] == ["valid_auc"]
    plt.close(fig)


def test_roc_points_match_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score, roc_curve

    from mixrec.pipelines.plots import roc_points

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 5000).astype(np.float32)
    probs = np.round(rng.uniform(size=5000) * 0.5 + labels * 0.2, 2)  # many ties
    fpr, tpr, auc = roc_points(labels, probs)
    ref_fpr, ref_tpr, _ = roc_curve(labels, probs, drop_intermediate=False)
    assert np.allclose(fpr, ref_fpr) and np.allclose(tpr, ref_tpr)
    assert abs(auc - roc_auc_score(labels, probs)) < 1e-12
