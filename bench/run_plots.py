"""Cost of the figures every pipeline run logs to MLflow (pipelines/story.py), on a test split of N rows.

ROC points by one sort and two cumulative sums (``plots.roc_points``) against sklearn's ``roc_curve`` +
``roc_auc_score`` (the baseline), same process, same scores; then the whole ``story.log_plots`` (ROC,
calibration, training curve, rendered and logged to a sqlite MLflow in a temporary folder).

    .venv/bin/python bench/run_plots.py --rows 2000000 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import mlflow
    from sklearn.metrics import roc_auc_score, roc_curve

    from mixrec.pipelines import story
    from mixrec.pipelines.plots import roc_points

    rng = np.random.default_rng(0)
    probs = rng.uniform(0.01, 0.4, args.rows).astype(np.float32)
    labels = (rng.uniform(size=args.rows) < probs).astype(np.float32)
    ours = best_of(lambda: roc_points(labels, probs), args.repeats)
    baseline = best_of(lambda: (roc_curve(labels, probs), roc_auc_score(labels, probs)), args.repeats)
    assert abs(roc_points(labels, probs)[2] - roc_auc_score(labels, probs)) < 1e-9
    history = {"train_loss": [(0, 0.5), (1, 0.45), (2, 0.43)], "valid_auc": [(0, 0.70), (1, 0.72), (2, 0.73)]}
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        with mlflow.start_run():
            story.log_plots(labels[:1000], probs[:1000], history)  # warm-up: imports, first artifact write
            logged = best_of(lambda: story.log_plots(labels, probs, history), args.repeats)
    print(f"{args.rows:,} rows, best of {args.repeats}: roc_points {ours:.2f} s, sklearn roc_curve + "
          f"roc_auc_score {baseline:.2f} s (ratio {baseline / ours:.1f}x); story.log_plots {logged:.2f} s")


if __name__ == "__main__":
    main()
