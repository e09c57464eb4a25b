"""Training with Ray Train: a ``TorchTrainer`` (DDP over gloo on CPU, NCCL on GPU) reading Ray Dataset shards.

Every epoch: train on the worker's shard, score the validation shard, gather predictions across workers,
report validation AUC and logloss; rank 0 writes a checkpoint (weights + model spec + preprocessing artifact,
optimizers and schedulers, position) and logs metrics to MLflow. With ``checkpoint_every_steps`` rank 0 also
checkpoints every N steps inside an epoch. A restarted worker group resumes from the latest checkpoint: the
epoch it was in, skipping the batches already trained on (the shard's order is Ray Data's streaming order, so
the skipped batches are the same rows only when that order is deterministic; the count is exact either way).

Each worker runs a :class:`TrainWorker`, phase by phase: build (or restore) its state, train one epoch,
validate, report (checkpoint + metrics), decide on early stopping.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mixrec.models import FeatureLayout, build_model
from mixrec.models.batch import COLUMN_DTYPES, Batch

from .checkpoint import read_progress, restore_training_state, save_checkpoint, save_training_state
from .config import TrainConfig
from .metrics import binary_metrics, predict, user_auc
from .optim import (
    build_optimizers,
    build_warmup_schedulers,
    build_weight_average,
    embedding_l2_penalty,
    embedding_tables,
    update_weight_average,
)
from .precise_bn import batch_norms, recompute_batch_norm
from .preprocess import Preprocessor
from .runtime import check_train_fits

UNLOGGED_METRICS = ("epoch", "worker_pid", "step", "resumed_from_step")  # positions, not per-epoch history


@dataclass
class EarlyStopping:
    """The best validation AUC so far and the epochs since it last improved; stop after ``patience`` stale
    epochs (None: never). Every rank sees the same gathered AUC, so all stop at the same epoch."""

    patience: int | None
    best_auc: float = -1.0
    stale_epochs: int = 0

    def update(self, auc: float) -> None:
        if auc > self.best_auc:
            self.best_auc, self.stale_epochs = auc, 0
        else:
            self.stale_epochs += 1

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale_epochs >= self.patience


@dataclass
class EpochStats:
    steps: int  # batches of the epoch done, skipped ones included
    resumed_from_step: int  # batches skipped: trained on before a restart
    loss_sum: float
    samples: int
    seconds: float
    global_samples_per_s: float = float("nan")  # every worker's rows / the slowest worker's seconds

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(self.steps - self.resumed_from_step, 1)


class TrainWorker:
    """One Ray Train worker's training loop (``cfg``: the loop config :func:`train` builds)."""

    def __init__(self, cfg: dict):
        import mlflow
        import ray
        import ray.train
        import ray.train.torch

        self.cfg = cfg
        torch.set_num_threads(cfg["torch_threads"])
        torch.manual_seed(cfg["seed"])
        self.rank = ray.train.get_context().get_world_rank()
        self.preprocessor = Preprocessor.from_json(cfg["preprocessor"])
        self.model = build_model(cfg["model_name"], FeatureLayout(**cfg["layout"]), **cfg["model_kwargs"])
        self.optimizers = build_optimizers(self.model, cfg)
        self.schedulers = build_warmup_schedulers(self.optimizers, cfg["warmup_steps"])
        # With ema_decay, the moving average of the weights is what is validated, checkpointed and served;
        # self.model holds the weights the optimizers train.
        self.averaged = build_weight_average(self.model, cfg["ema_decay"]) if cfg.get("ema_decay") else None
        self.scored = self.averaged.module if self.averaged is not None else self.model
        # Position: `start_epoch` with `skip_steps` batches of it done (0: the epoch starts from its beginning).
        self.start_epoch, self.skip_steps = 0, 0
        self.early_stopping = EarlyStopping(cfg["early_stopping_patience"])
        self._restore(ray.train.get_checkpoint())
        self.ddp_model = ray.train.torch.prepare_model(self.model)  # self.model stays unwrapped: eval, saving
        if self.averaged is not None:
            self.averaged.to(next(self.model.parameters()).device)
        self.forward = torch.compile(self.ddp_model) if cfg["compile"] else self.ddp_model
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        # embedding L2 (FuxiCTR's embedding_regularizer): every worker adds it to its loss and DDP averages the
        # gradients, so the penalty's gradient is embedding_l2 * table whatever the worker count
        self.embedding_l2 = cfg.get("embedding_l2", 0.0)
        self.tables = embedding_tables(self.model)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.valid_shard = ray.train.get_dataset_shard("valid")
        self.mlflow = mlflow.MlflowClient(cfg["tracking_uri"]) if self.rank == 0 and cfg.get("mlflow_run_id") else None
        self.distributed = dist.is_available() and dist.is_initialized()
        self.nodes = self._all_gather(ray.get_runtime_context().get_node_id())
        # the epoch's last training batches, kept for the BatchNorm statistics (none without BatchNorm)
        self.recent_batches: deque[Batch] = deque(maxlen=cfg.get("precise_bn_batches", 0)
                                                  if batch_norms(self.scored) else 0)

    # --- build / restore -----------------------------------------------------------------------------------
    def _restore(self, checkpoint) -> None:
        """Resume from the latest checkpoint of a restarted worker group: weights, optimizers, position."""
        if not checkpoint:
            return
        with checkpoint.as_directory() as d:
            progress = restore_training_state(Path(d), self.model, self.optimizers, self.schedulers, self.averaged)
        self.start_epoch, self.skip_steps = progress["next_epoch"], progress["next_step"]
        self.early_stopping.best_auc = progress["best_auc"]
        self.early_stopping.stale_epochs = progress["stale_epochs"]

    def _all_gather(self, value) -> list:
        """``value`` of every rank, in rank order ([value] without a process group)."""
        if not self.distributed:
            return [value]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered

    # --- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> None:
        for epoch in range(self.start_epoch, self.cfg["epochs"]):
            stats = self.train_epoch(epoch)
            # BatchNorm statistics of the epoch's final (or averaged) weights, dropout off: what evaluation and
            # the checkpoint use (pipelines/precise_bn.py); not counted in the epoch's training time
            if self.recent_batches.maxlen:
                recompute_batch_norm(self.scored, self.recent_batches, distributed=self.distributed)
                self.recent_batches.clear()
            workers = self._all_gather((stats.samples, stats.seconds))
            stats.global_samples_per_s = sum(n for n, _ in workers) / max(max(s for _, s in workers), 1e-9)
            self.skip_steps = 0  # only the epoch a restart lands in resumes mid-way
            valid = self.validate()
            self.early_stopping.update(valid["auc"])
            self.report(self.epoch_metrics(epoch, stats, valid), next_epoch=epoch + 1, next_step=0)
            if self.early_stopping.should_stop:
                break

    def train_epoch(self, epoch: int) -> EpochStats:
        """Train on this worker's shard, skipping the batches a restart already trained on; with
        ``checkpoint_every_steps`` checkpoint every N steps."""
        self.ddp_model.train()
        every = self.cfg["checkpoint_every_steps"]
        stats = EpochStats(steps=0, resumed_from_step=self.skip_steps, loss_sum=0.0, samples=0, seconds=0.0)
        t0 = time.perf_counter()
        shuffle = shuffle_options(self.cfg["shuffle_buffer_batches"], self.cfg["batch_size"], self.cfg["seed"], epoch,
                                  self.rank)
        for columns in self.train_shard.iter_torch_batches(batch_size=self.cfg["batch_size"], dtypes=COLUMN_DTYPES,
                                                           prefetch_batches=2, **shuffle):
            if stats.steps < self.skip_steps:  # resuming mid-epoch: trained on before the failure
                stats.steps += 1
                continue
            batch = Batch.from_arrays(columns)
            self.recent_batches.append(batch)
            stats.loss_sum += self.train_step(batch, epoch, stats.steps)
            stats.steps += 1
            stats.samples += len(batch)
            if every and stats.steps % every == 0:
                # Not a validation point: valid_auc NaN ranks it below every evaluated checkpoint, while Ray
                # Train always keeps (and resumes from) the latest checkpoint.
                self.report({"epoch": epoch, "step": stats.steps, "valid_auc": float("nan"),
                             "train_loss": stats.train_loss, "worker_pid": os.getpid()},
                            next_epoch=epoch, next_step=stats.steps)
        stats.seconds = time.perf_counter() - t0
        return stats

    def train_step(self, batch: Batch, epoch: int, step: int) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        bf16 = self.cfg["precision"] == "bf16"
        with torch.autocast("cuda" if self.cfg["use_gpu"] else "cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = self.forward(batch.categorical, batch.dense)
            loss = self.loss_fn(logits.float(), batch.labels) + self.model.auxiliary_loss(batch.labels)
        if self.embedding_l2:
            loss = loss + embedding_l2_penalty(self.tables, self.embedding_l2)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss is {float(loss)} at epoch {epoch}, step {step}")
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["max_grad_norm"])
        for opt in self.optimizers.values():
            opt.step()
        for scheduler in self.schedulers.values():
            scheduler.step()
        if self.averaged is not None:
            update_weight_average(self.averaged, self.model)
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        """Score the validation shard, gather every rank's predictions, compute the metrics on all of them
        (``rows``: how many; ``uauc`` with a user column). A dual-router MoE (DTSI, ``eval_router``) is scored
        with its inference router (the metrics) and its train router too: ``auc_{infer,train}_router``."""
        valid = self._score()
        if hasattr(self.scored, "eval_router"):
            valid["auc_infer_router"] = valid["auc"]
            self.scored.eval_router = "train"
            try:
                valid["auc_train_router"] = self._score()["auc"]
            finally:
                self.scored.eval_router = "infer"
        return valid

    def _score(self) -> dict[str, float]:
        user_column = self.cfg["user_column"]
        scored = predict(self.scored, self.valid_shard, self.cfg["batch_size"] * 4, user_column)
        gathered = self._all_gather(scored)
        labels, probs, users = (np.concatenate([g[i] for g in gathered]) for i in range(3))
        valid = binary_metrics(labels, probs)
        if user_column is not None:
            known = users > 0  # id 0 pools every unknown user: no user of its own
            valid["uauc"] = user_auc(users[known], labels[known], probs[known])
        valid["rows"] = len(labels)
        return valid

    def epoch_metrics(self, epoch: int, stats: EpochStats, valid: dict[str, float]) -> dict:
        return {"epoch": epoch, "step": stats.steps, "resumed_from_step": stats.resumed_from_step,
                "train_loss": stats.train_loss, "train_samples_per_s": stats.samples / max(stats.seconds, 1e-9),
                "train_global_samples_per_s": stats.global_samples_per_s,
                "valid_auc": valid["auc"], "valid_logloss": valid["logloss"],
                "valid_calibration": valid["calibration"], "valid_uauc": valid.get("uauc", float("nan")),
                "valid_rows": int(valid["rows"]), "num_nodes": len(set(self.nodes)), "worker_pid": os.getpid(),
                **{f"valid_{k}": valid[k] for k in ("auc_infer_router", "auc_train_router") if k in valid}}

    # --- report + checkpoint -------------------------------------------------------------------------------
    def report(self, metrics: dict, next_epoch: int, next_step: int) -> None:
        """Every rank reports, as Ray Train requires; rank 0 with the checkpoint (weights, spec, preprocessing,
        optimizers + schedulers, the position to resume from) and, at an epoch's end, its MLflow metrics."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        epoch_end = next_step == 0
        if self.mlflow and epoch_end:
            for key, value in metrics.items():
                if key not in UNLOGGED_METRICS:
                    self.mlflow.log_metric(self.cfg["mlflow_run_id"], key, float(value), step=metrics["epoch"])
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), self.scored, self.preprocessor)
            save_training_state(Path(tmp), self.optimizers, self.schedulers, {
                "next_epoch": next_epoch, "next_step": next_step, "metrics": metrics,
                "best_auc": self.early_stopping.best_auc, "stale_epochs": self.early_stopping.stale_epochs},
                averaged=self.averaged, live_model=self.model)
            if self.mlflow and epoch_end and self.cfg["log_checkpoints"] == "every_epoch":
                self.mlflow.log_artifacts(self.cfg["mlflow_run_id"], tmp, f"checkpoints/epoch-{next_epoch - 1:03d}")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def shuffle_options(buffer_batches: int, batch_size: int, seed: int, epoch: int, rank: int) -> dict:
    """Ray Data local-shuffle arguments of one worker's epoch: a buffer of ``buffer_batches`` batches, seeded by
    (seed, epoch, rank) so every epoch has a new order and a rerun the same one; ``{}`` (file order) for 0."""
    if not buffer_batches:
        return {}
    return {"local_shuffle_buffer_size": buffer_batches * batch_size,
            "local_shuffle_seed": seed * 1_000_003 + epoch * 1_009 + rank}


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every Ray Train worker."""
    TrainWorker(cfg).fit()


def epoch_line(metrics: dict, epochs: int) -> str:
    """One line per epoch from rank 0's report: loss, validation AUC / logloss, throughput."""
    return (f"epoch {int(metrics['epoch']) + 1}/{epochs}: train loss {metrics['train_loss']:.4f}, valid AUC "
            f"{metrics['valid_auc']:.4f}, logloss {metrics['valid_logloss']:.4f}, "
            f"{metrics['train_global_samples_per_s']:,.0f} samples/s ({metrics['train_samples_per_s']:,.0f} per worker)")


def epoch_relay(queue):
    """A Ray Train callback (run on the Train controller) that puts rank 0's metrics of each finished epoch on
    ``queue`` (a :func:`~mixrec.pipelines.progress.relay` queue); mid-epoch checkpoint reports are skipped."""
    from ray.train import UserCallback

    class EpochRelay(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and "valid_rows" in metrics[0]:
                queue.put_nowait(dict(metrics[0]))

    return EpochRelay()


@dataclass
class TrainOutcome:
    checkpoint_dir: Path  # the best checkpoint (highest validation AUC)
    metrics: dict  # of the best checkpoint's epoch
    seconds: float
    last_metrics: dict  # of the last epoch reported


def train(train_ds, valid_ds, preprocessor: Preprocessor, model_name: str, model_kwargs: dict, cfg: TrainConfig,
          storage_path: Path, run_name: str, tracking_uri: str | None = None, mlflow_run_id: str | None = None,
          callbacks: list | None = None, user_key: str = "user_id", max_failures: int = 1,
          on_epoch: Callable[[dict], None] | None = None) -> TrainOutcome:
    """Fit with Ray Train; a failed worker group is restarted once and resumes from the latest checkpoint.
    ``callbacks``: Ray Train ``UserCallback``s (run on the controller). ``on_epoch``: called on the driver with
    rank 0's metrics of each finished epoch, while training goes on (see :func:`epoch_line`)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .progress import relay

    layout = preprocessor.layout()
    model = build_model(model_name, layout, **model_kwargs)  # fail fast on a bad config, before any worker starts
    if cfg.ema_decay and not cfg.precise_bn_batches and batch_norms(model):
        # averaged BatchNorm statistics do not belong to the averaged weights (DCNv2 fell to AUC 0.93 on Frappe)
        raise ValueError(f"train.ema_decay needs train.precise_bn_batches > 0 for {model_name}, which has "
                         "BatchNorm: the average's statistics are recomputed from those batches")
    check_train_fits(cfg.num_workers, cfg.cpus_per_worker, ray.cluster_resources().get("CPU", 0.0))
    loop_cfg = {
        "model_name": model_name, "model_kwargs": model_kwargs, "layout": asdict(layout),
        "preprocessor": preprocessor.to_json(), "epochs": cfg.epochs, "batch_size": cfg.worker_batch_size,
        "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "embedding_l2": cfg.embedding_l2,
        "max_grad_norm": cfg.max_grad_norm, "shuffle_buffer_batches": cfg.shuffle_buffer_batches,
        "precise_bn_batches": cfg.precise_bn_batches, "ema_decay": cfg.ema_decay,
        "seed": cfg.seed,
        "torch_threads": cfg.worker_threads, "tracking_uri": tracking_uri,
        "optimizer": cfg.optimizer, "embedding_optimizer": cfg.embedding_optimizer,
        "embedding_learning_rate": cfg.embedding_learning_rate, "early_stopping_patience": cfg.early_stopping_patience,
        "use_gpu": cfg.use_gpu, "precision": cfg.precision, "compile": cfg.compile, "warmup_steps": cfg.warmup_steps,
        "user_column": preprocessor.id_column(user_key) if user_key in preprocessor.categorical else None,
        "mlflow_run_id": mlflow_run_id, "checkpoint_every_steps": cfg.checkpoint_every_steps,
        "log_checkpoints": cfg.log_checkpoints,
    }
    with relay(on_epoch) as queue:  # epoch lines on the driver while the workers train
        callbacks = [*(callbacks or []), *([epoch_relay(queue)] if queue is not None else [])]
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
                failure_config=FailureConfig(max_failures=max_failures), callbacks=callbacks),
            datasets={"train": train_ds, "valid": valid_ds},
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - t0
    best = result.get_best_checkpoint(metric="valid_auc", mode="max") or result.checkpoint
    if best is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    checkpoint_dir = Path(best.path)
    progress = read_progress(checkpoint_dir)
    return TrainOutcome(checkpoint_dir=checkpoint_dir, metrics=progress["metrics"], seconds=seconds,
                        last_metrics=dict(result.metrics or progress["metrics"]))
