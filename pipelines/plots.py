"""The figures every pipeline run logs to MLflow (``mlflow.log_figure``): ROC and calibration on the test split,
and the training curve (per-epoch loss and AUC). Pure matplotlib on arrays (Agg backend); each costs well under
a second whatever the test split's size, because the curves are thinned to at most ``max_points`` points."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go to files / MLflow only
    import matplotlib.pyplot as plt

    return plt


def thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve (first and last kept); x, y: [n]."""
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(np.int64))
    return x[keep], y[keep]


def roc_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates, AUC) at every distinct threshold; labels, probs: [n] with
    both classes. One sort and two cumulative sums (about 3x faster than sklearn's roc_curve + roc_auc_score:
    bench/run_plots.py); ties share a threshold, so the trapezoid AUC equals the Mann-Whitney AUC."""
    order = np.argsort(-probs, kind="stable")
    sorted_probs, hits = probs[order], labels[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(sorted_probs)), len(probs) - 1]  # last row of each distinct score
    tps = np.cumsum(hits)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def roc_figure(labels: np.ndarray, probs: np.ndarray, max_points: int = 2000):
    """ROC curve of click probabilities ``probs`` [n] against 0/1 ``labels`` [n], AUC in the legend."""
    plt = _pyplot()
    fpr, tpr, auc = roc_points(labels, probs)
    fpr, tpr = thin(fpr, tpr, max_points)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"model (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def calibration_figure(labels: np.ndarray, probs: np.ndarray, bins: int = 10):
    """Observed click rate per quantile bin of the predicted probability (reliability diagram); labels, probs: [n]."""
    plt = _pyplot()
    edges = np.unique(np.quantile(probs, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, max(len(edges) - 2, 0))
    counts = np.bincount(which, minlength=len(edges) - 1)
    filled = counts > 0
    predicted = np.bincount(which, weights=probs, minlength=len(edges) - 1)[filled] / counts[filled]
    observed = np.bincount(which, weights=labels, minlength=len(edges) - 1)[filled] / counts[filled]
    top = float(max(predicted.max(initial=0.0), observed.max(initial=0.0), 1e-3))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(predicted, observed, marker="o", label="model")
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set(xlabel="mean predicted click probability", ylabel="observed click rate",
           title=f"calibration, test split ({len(predicted)} quantile bins)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def training_curve_figure(history: dict[str, list[tuple[int, float]]]):
    """Per-epoch curves: ``history`` maps a metric name (train_loss, valid_logloss, valid_auc, ...) to
    (epoch, value) pairs. Losses on the left axis, AUCs on the right."""
    plt = _pyplot()
    fig, loss_ax = plt.subplots(figsize=(6, 4))
    auc_ax = loss_ax.twinx()
    for name, points in sorted(history.items()):
        if not points:
            continue
        epochs, values = zip(*sorted(points), strict=True)
        ax = auc_ax if "auc" in name else loss_ax
        ax.plot(epochs, values, marker="o", linestyle="--" if "auc" in name else "-", label=name)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training curve")
    auc_ax.set_ylabel("AUC")
    handles = [h for ax in (loss_ax, auc_ax) for h in ax.get_legend_handles_labels()[0]]
    loss_ax.legend(handles, [h.get_label() for h in handles], loc="best")
    loss_ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig
