"""Training with Ray Train: a ``TorchTrainer`` (DDP over gloo on CPU, NCCL on GPU) reading Ray Dataset shards.

Every epoch: train on the worker's shard, score the validation shard, gather predictions across workers,
report validation AUC and logloss; rank 0 writes a checkpoint (weights + model spec + preprocessing artifact,
optimizers and schedulers, position) and logs metrics to MLflow. With ``checkpoint_every_steps`` rank 0 also
checkpoints every N steps inside an epoch. A restarted worker group resumes from the latest checkpoint: the
epoch it was in, skipping the batches already trained on (the shard's order is Ray Data's streaming order, so
the skipped batches are the same rows only when that order is deterministic; the count is exact either way).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .preprocess import Preprocessor


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
    import pandas as pd

    df = pd.DataFrame({"u": users, "y": labels.astype(np.float64), "p": probs})
    df["rank_pos"] = df.groupby("u")["p"].rank() * df["y"]  # ranks of the positives, ties averaged
    g = df.groupby("u").agg(n=("y", "size"), pos=("y", "sum"), rank_pos=("rank_pos", "sum"))
    g = g[(g["pos"] > 0) & (g["pos"] < g["n"])]
    if g.empty:
        return float("nan")
    neg = g["n"] - g["pos"]
    auc = (g["rank_pos"] - g["pos"] * (g["pos"] + 1) / 2) / (g["pos"] * neg)
    return float((auc * g["n"]).sum() / g["n"].sum())


def _predict(module, shard, batch_size: int, user_column: int | None = None):
    import torch

    labels, probs, users = [], [], []
    module.eval()
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=_dtypes()):
            probs.append(torch.sigmoid(module(batch["categorical"], batch["dense"])).numpy())
            labels.append(batch["label"].numpy())
            if user_column is not None:
                users.append(batch["categorical"][:, user_column].numpy())
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return cat(labels, np.float32), cat(probs, np.float32), cat(users, np.int64)


OPTIMIZERS = {"adam": "Adam", "adagrad": "Adagrad", "rmsprop": "RMSprop", "sgd": "SGD"}
FUSED = {"adam", "adagrad", "sgd"}


def build_optimizers(model, cfg: dict) -> dict:
    """Two optimizers, as the papers train them: one for the embedding table (``embedding_*`` settings, e.g.
    Adagrad) and one for the dense weights (e.g. Adam or RMSProp)."""
    import torch

    tables = [p for n, p in model.named_parameters() if n.endswith("embedding.table.weight")]
    dense = [p for n, p in model.named_parameters() if not n.endswith("embedding.table.weight")]
    def make(name: str, params: list, lr: float):
        # fused: one kernel over all tensors instead of a loop per parameter (CPU and GPU; not for RMSprop)
        extra = {"fused": True} if name in FUSED else {}
        return getattr(torch.optim, OPTIMIZERS[name])(params, lr=lr, weight_decay=cfg["weight_decay"], **extra)

    groups = {"dense": make(cfg["optimizer"], dense, cfg["learning_rate"])}
    if tables:
        groups["embedding"] = make(cfg["embedding_optimizer"] or cfg["optimizer"], tables,
                                   cfg["embedding_learning_rate"] or cfg["learning_rate"])
    return groups


def _dtypes():
    import torch

    return {"categorical": torch.int64, "dense": torch.float32, "label": torch.float32}


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every Ray Train worker."""
    import mlflow
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from mixrec.models import FeatureLayout, build_model

    from .checkpoint import save_checkpoint

    torch.set_num_threads(cfg["torch_threads"])
    torch.manual_seed(cfg["seed"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    preprocessor = Preprocessor.from_json(cfg["preprocessor"])
    layout = FeatureLayout(**cfg["layout"])
    model = build_model(cfg["model_name"], layout, **cfg["model_kwargs"])
    optimizers = build_optimizers(model, cfg)
    warmup = max(1, cfg["warmup_steps"])
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
                  for name, opt in optimizers.items()}
    # Position: `epoch` with `step` batches of it done (step 0: the epoch starts from its beginning).
    start_epoch, skip_steps, best_auc, stale_epochs = 0, 0, -1.0, 0
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as d:
            model.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True))
            states = torch.load(Path(d) / "optimizer.pt", map_location="cpu", weights_only=True)
            for name, opt in optimizers.items():
                opt.load_state_dict(states[name])
                schedulers[name].load_state_dict(states[f"{name}_scheduler"])
            progress = json.loads((Path(d) / "progress.json").read_text())
        start_epoch, skip_steps = progress["next_epoch"], progress["next_step"]
        best_auc, stale_epochs = progress["best_auc"], progress["stale_epochs"]
    ddp_model = ray.train.torch.prepare_model(model)
    module = model  # unwrapped, for evaluation and saving
    device_type = "cuda" if cfg["use_gpu"] else "cpu"
    autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")  # noqa: E731
    forward = torch.compile(ddp_model) if cfg["compile"] else ddp_model
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    client = mlflow.MlflowClient(cfg["tracking_uri"]) if rank == 0 and cfg.get("mlflow_run_id") else None
    distributed = dist.is_available() and dist.is_initialized()
    nodes = [ray.get_runtime_context().get_node_id()]
    if distributed:
        nodes = [None] * dist.get_world_size()
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())

    def save_and_report(metrics: dict, next_epoch: int, next_step: int) -> None:
        """Rank 0 writes the checkpoint (weights, spec, preprocessing, optimizers + schedulers, position);
        every rank reports, as Ray Train requires."""
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), module, preprocessor)
            torch.save({**{name: opt.state_dict() for name, opt in optimizers.items()},
                        **{f"{name}_scheduler": sch.state_dict() for name, sch in schedulers.items()}},
                       Path(tmp) / "optimizer.pt")
            (Path(tmp) / "progress.json").write_text(json.dumps(
                {"next_epoch": next_epoch, "next_step": next_step, "metrics": metrics,
                 "best_auc": best_auc, "stale_epochs": stale_epochs}))
            if client and next_step == 0 and cfg["log_checkpoints"] == "every_epoch":
                client.log_artifacts(cfg["mlflow_run_id"], tmp, f"checkpoints/epoch-{next_epoch - 1:03d}")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    every = cfg["checkpoint_every_steps"]
    for epoch in range(start_epoch, cfg["epochs"]):
        ddp_model.train()
        t0, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        batches = train_shard.iter_torch_batches(batch_size=cfg["batch_size"], dtypes=_dtypes(), prefetch_batches=2)
        for batch in batches:
            if steps < skip_steps:  # resuming mid-epoch: these batches were trained on before the failure
                steps += 1
                continue
            with autocast():
                logits = forward(batch["categorical"], batch["dense"])
                loss = loss_fn(logits.float(), batch["label"]) + module.auxiliary_loss(batch["label"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged: loss is {float(loss)} at epoch {epoch}, step {steps}")
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
            for scheduler in schedulers.values():
                scheduler.step()
            loss_sum += float(loss.detach())
            steps += 1
            seen += len(batch["label"])
            if every and steps % every == 0:
                # Not a validation point: valid_auc NaN ranks it below every evaluated checkpoint, while Ray
                # Train always keeps (and resumes from) the latest checkpoint.
                save_and_report({"epoch": epoch, "step": steps, "valid_auc": float("nan"),
                                 "train_loss": loss_sum / max(steps - skip_steps, 1), "worker_pid": os.getpid()},
                                next_epoch=epoch, next_step=steps)
        resumed_from_step, skip_steps = skip_steps, 0
        train_seconds = time.perf_counter() - t0
        labels, probs, users = _predict(module, valid_shard, cfg["batch_size"] * 4, cfg["user_column"])
        if distributed:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (labels, probs, users))
            labels, probs, users = (np.concatenate([g[i] for g in gathered]) for i in range(3))
        valid = binary_metrics(labels, probs)
        if cfg["user_column"] is not None:
            known = users > 0  # id 0 pools every unknown user: no user of its own
            valid["uauc"] = user_auc(users[known], labels[known], probs[known])
        improved = valid["auc"] > best_auc
        best_auc, stale_epochs = (valid["auc"], 0) if improved else (best_auc, stale_epochs + 1)
        metrics = {"epoch": epoch, "step": steps, "resumed_from_step": resumed_from_step,
                   "train_loss": loss_sum / max(steps - resumed_from_step, 1),
                   "train_samples_per_s": seen / max(train_seconds, 1e-9),
                   "valid_auc": valid["auc"], "valid_logloss": valid["logloss"],
                   "valid_calibration": valid["calibration"], "valid_uauc": valid.get("uauc", float("nan")),
                   "valid_rows": int(len(labels)),
                   "num_nodes": len(set(nodes)), "worker_pid": os.getpid()}
        if client:
            for key, value in metrics.items():
                if key not in ("epoch", "worker_pid", "step", "resumed_from_step"):
                    client.log_metric(cfg["mlflow_run_id"], key, float(value), step=epoch)
        save_and_report(metrics, next_epoch=epoch + 1, next_step=0)
        patience = cfg["early_stopping_patience"]
        if patience is not None and stale_epochs >= patience:
            break  # every rank sees the same gathered validation AUC, so all stop at the same epoch


@dataclass
class TrainOutcome:
    checkpoint_dir: Path  # the best checkpoint (highest validation AUC)
    metrics: dict  # of the best checkpoint's epoch
    seconds: float
    last_metrics: dict  # of the last epoch reported


def train(train_ds, valid_ds, preprocessor: Preprocessor, model_name: str, model_kwargs: dict, cfg: TrainConfig,
          storage_path: Path, run_name: str, tracking_uri: str | None = None, mlflow_run_id: str | None = None,
          callbacks: list | None = None, user_key: str = "user_id", max_failures: int = 1) -> TrainOutcome:
    """Fit with Ray Train; a failed worker group is restarted once and resumes from the latest checkpoint.
    ``callbacks``: Ray Train ``UserCallback``s (run on the controller)."""
    from dataclasses import asdict

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mixrec.models import build_model

    layout = preprocessor.layout()
    build_model(model_name, layout, **model_kwargs)  # fail fast on a bad model config, before any worker starts
    loop_cfg = {
        "model_name": model_name, "model_kwargs": model_kwargs, "layout": asdict(layout),
        "preprocessor": preprocessor.to_json(), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
        "torch_threads": max(1, int(cfg.cpus_per_worker)), "tracking_uri": tracking_uri,
        "optimizer": cfg.optimizer, "embedding_optimizer": cfg.embedding_optimizer,
        "embedding_learning_rate": cfg.embedding_learning_rate, "early_stopping_patience": cfg.early_stopping_patience,
        "use_gpu": cfg.use_gpu, "precision": cfg.precision, "compile": cfg.compile, "warmup_steps": cfg.warmup_steps,
        "user_column": preprocessor.id_column(user_key) if user_key in preprocessor.categorical else None,
        "mlflow_run_id": mlflow_run_id, "checkpoint_every_steps": cfg.checkpoint_every_steps,
        "log_checkpoints": cfg.log_checkpoints,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker},
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=run_name, storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="valid_auc",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures), callbacks=callbacks or []),
        datasets={"train": train_ds, "valid": valid_ds},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    best = result.get_best_checkpoint(metric="valid_auc", mode="max") or result.checkpoint
    if best is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    checkpoint_dir = Path(best.path)
    progress = json.loads((checkpoint_dir / "progress.json").read_text())
    return TrainOutcome(checkpoint_dir=checkpoint_dir, metrics=progress["metrics"], seconds=seconds,
                        last_metrics=dict(result.metrics or progress["metrics"]))
