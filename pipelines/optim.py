"""Optimizers and learning-rate schedules for training: one optimizer for the embedding table and one for the
dense weights, each with a linear warm-up."""

from __future__ import annotations

import torch

OPTIMIZERS = {"adam": "Adam", "adagrad": "Adagrad", "rmsprop": "RMSprop", "sgd": "SGD"}
FUSED = {"adam", "adagrad", "sgd"}
EMBEDDING_TABLE = "embedding.table.weight"


def build_optimizers(model, cfg: dict) -> dict[str, torch.optim.Optimizer]:
    """Two optimizers, as the papers train them: one for the embedding table (``embedding_*`` settings, e.g.
    Adagrad) and one for the dense weights (e.g. Adam or RMSProp)."""
    tables = embedding_tables(model)
    dense = [p for n, p in model.named_parameters() if not n.endswith(EMBEDDING_TABLE)]

    def make(name: str, params: list, lr: float):
        # fused: one kernel over all tensors instead of a loop per parameter (CPU and GPU; not for RMSprop)
        extra = {"fused": True} if name in FUSED else {}
        return getattr(torch.optim, OPTIMIZERS[name])(params, lr=lr, weight_decay=cfg["weight_decay"], **extra)

    groups = {"dense": make(cfg["optimizer"], dense, cfg["learning_rate"])}
    if tables:
        groups["embedding"] = make(cfg["embedding_optimizer"] or cfg["optimizer"], tables,
                                   cfg["embedding_learning_rate"] or cfg["learning_rate"])
    return groups


def embedding_tables(model) -> list[torch.nn.Parameter]:
    """The model's embedding table(s): the parameters the embedding optimizer and ``embedding_l2`` act on."""
    return [p for n, p in model.named_parameters() if n.endswith(EMBEDDING_TABLE)]


def embedding_l2_penalty(tables: list[torch.Tensor], l2: float) -> torch.Tensor:
    """``l2 / 2 * sum of squared entries`` of the tables: FuxiCTR's ``embedding_regularizer`` (its gradient is
    ``l2 * table``). Added to each worker's loss; DDP averages the gradients, so the worker count does not
    scale it."""
    return l2 / 2 * sum(t.pow(2).sum() for t in tables)


def build_warmup_schedulers(optimizers: dict[str, torch.optim.Optimizer], warmup_steps: int
                            ) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    """Per optimizer, a learning rate that rises linearly over the first ``warmup_steps`` steps (at least one),
    then stays at the configured rate."""
    warmup = max(1, warmup_steps)
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
            for name, opt in optimizers.items()}


def build_weight_average(model, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights (torch's ``AveragedModel``; its ``.module`` is the
    averaged copy): ``avg ← decay · avg + (1 − decay) · weights`` after every step, floating buffers too
    (BatchNorm statistics), integer buffers (step counters) copied as they are. Update it with
    :func:`update_weight_average`."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def update_weight_average(averaged: torch.optim.swa_utils.AveragedModel, model) -> None:
    averaged.update_parameters(model)
    # torch's EMA rounds integer buffers toward their first value (a step counter would stop): copy them
    for kept, live in zip(averaged.module.buffers(), model.buffers(), strict=True):
        if not kept.is_floating_point():
            kept.copy_(live)
