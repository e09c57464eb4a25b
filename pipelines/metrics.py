"""Scoring a prepared dataset with a model, and the metrics reported on the scores (AUC, logloss,
calibration, per-user AUC): the same for training's validation and the test evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mixrec.models.batch import COLUMN_DTYPES, Batch


def predict(model, dataset, batch_size: int, user_column: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score a prepared Ray Dataset (or shard) in eval mode: (labels, click probabilities, the ids of
    ``user_column``, empty without one), in the dataset's order."""
    labels, probs, users = [], [], []
    model.eval()
    with torch.no_grad():
        for columns in dataset.iter_torch_batches(batch_size=batch_size, dtypes=COLUMN_DTYPES):
            batch = Batch.from_arrays(columns)
            # batches and outputs may live on the GPU (Ray Train moves batches to the worker's device)
            probs.append(torch.sigmoid(model(batch.categorical, batch.dense).float()).cpu().numpy())
            labels.append(batch.labels.cpu().numpy())
            if user_column is not None:
                users.append(batch.categorical[:, user_column].cpu().numpy())
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return cat(labels, np.float32), cat(probs, np.float32), cat(users, np.int64)


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, logloss and calibration (mean prediction / observed rate)."""
    from sklearn.metrics import log_loss, roc_auc_score

    probs = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    observed = float(labels.mean()) if len(labels) else float("nan")
    auc = float(roc_auc_score(labels, probs)) if 0 < labels.sum() < len(labels) else float("nan")
    return {"auc": auc, "logloss": float(log_loss(labels, probs, labels=[0, 1])),
            "calibration": float(probs.mean() / observed) if observed > 0 else float("nan")}


def user_auc(users: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC over users with both outcomes (UAUC), vectorized:
    per-user AUC from within-user ranks (Mann-Whitney U)."""
    df = pd.DataFrame({"u": users, "y": labels.astype(np.float64), "p": probs})
    df["rank_pos"] = df.groupby("u")["p"].rank() * df["y"]  # ranks of the positives, ties averaged
    g = df.groupby("u").agg(n=("y", "size"), pos=("y", "sum"), rank_pos=("rank_pos", "sum"))
    g = g[(g["pos"] > 0) & (g["pos"] < g["n"])]
    if g.empty:
        return float("nan")
    neg = g["n"] - g["pos"]
    auc = (g["rank_pos"] - g["pos"] * (g["pos"] + 1) / 2) / (g["pos"] * neg)
    return float((auc * g["n"]).sum() / g["n"].sum())
