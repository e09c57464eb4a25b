"""The training loop, metrics and tables shared by the quality benchmarks (``frappe_quality.py``,
``synthetic_quality.py``) — not a test, not part of the package.

FuxiCTR/BARS-style protocol: Adam, BCE (+ the model's auxiliary loss) + L2 on the embedding table
(``emb_reg / 2 · ‖E‖²``, FuxiCTR's ``embedding_regularizer``), optional decoupled weight decay on the other
parameters; at the end of each epoch lr × 0.1 when validation AUC did not improve, stop after ``patience``
epochs without improvement, and test the best-validation weights (or, with ``--ema-decay``, the best of their
exponential moving average, updated after every step). Every epoch's train loss and validation
AUC/logloss are kept (the curves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixrec.models.batch import Batch
from mixrec.pipelines.optim import (
    build_weight_average,
    embedding_l2_penalty,
    embedding_tables,
    update_weight_average,
)
from mixrec.pipelines.precise_bn import batch_norms, recompute_batch_norm

# A split: (categorical [N, n_id_columns] int64, dense [N, n_dense] float32 or None, label [N] float32)
Split = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


def add_training_args(p: argparse.ArgumentParser, max_epochs: int = 30) -> None:
    p.add_argument("--max-epochs", type=int, default=max_epochs)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW-style decay on non-embedding weights")
    p.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm (FuxiCTR: 10)")
    p.add_argument("--emb-reg", type=float, default=None, help="override the per-model embedding L2")
    p.add_argument("--emb-init", type=float, default=None, help="re-initialise the embedding table N(0, std²)")
    p.add_argument("--freeze-embeddings-at-step", action="store_true",
                   help="stop training the embedding tables at the first lr step (the rest trains on)")
    p.add_argument("--lr-factor", type=float, default=0.1, help="the lr is multiplied by this at each step")
    p.add_argument("--restore-best-at-step", action="store_true",
                   help="at each lr step, go back to the best-validation weights first")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="validate and test an exponential moving average of the weights (e.g. 0.99 per step)")
    p.add_argument("--override", default="{}", help="JSON dict of model kwargs overriding the preset")
    p.add_argument("--variant", default="", help="a label for this variant in the results (e.g. an ablation arm)")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device for the model and the splits, e.g. cuda")
    p.add_argument("--results", default=None, help="append one JSON line per model here")
    p.add_argument("--table-only", action="store_true", help="print the table of --results and exit")


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC with average ranks for ties."""
    order = np.argsort(p, kind="mergesort")
    _, inv, counts = np.unique(p[order], return_inverse=True, return_counts=True)
    ranks = np.empty(len(p), dtype=np.float64)
    ranks[order] = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    npos = y.sum()
    nneg = len(y) - npos
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


@torch.no_grad()
def evaluate(model, split: Split, bs: int = 16384) -> tuple[float, float]:
    """(AUC, logloss) of ``model`` on ``split``."""
    cat, dense, y = split
    model.eval()
    logits = torch.cat([model(cat[i:i + bs], None if dense is None else dense[i:i + bs])
                        for i in range(0, len(cat), bs)])
    ll = F.binary_cross_entropy_with_logits(logits, y).item()
    return auc(y.cpu().numpy(), torch.sigmoid(logits).double().cpu().numpy()), ll


def _optimizer(model, tables: list, args) -> torch.optim.Optimizer:
    others = [p for p in model.parameters() if all(p is not t for t in tables)]
    groups = [{"params": tables, "weight_decay": 0.0},
              {"params": others, "weight_decay": args.weight_decay}]
    return torch.optim.AdamW(groups, lr=args.lr) if args.weight_decay else torch.optim.Adam(groups, lr=args.lr)


def to_device(split: Split, device: str) -> Split:
    cat, dense, y = split
    return cat.to(device), None if dense is None else dense.to(device), y.to(device)


def fit(name: str, model, emb_reg: float, data: dict[str, Split], args) -> dict:
    """Train with early stopping on validation AUC, test the best weights; one result row."""
    model = model.to(args.device)
    data = {part: to_device(split, args.device) for part, split in data.items()}
    tables = embedding_tables(model)
    if args.emb_init is not None:
        with torch.no_grad():
            for table in tables:
                table.normal_(std=args.emb_init)
    opt = _optimizer(model, tables, args)
    # The EMA copy is what is validated, kept and tested; the raw weights only train.
    averaged = None if args.ema_decay is None else build_weight_average(model, args.ema_decay)
    scored = model if averaged is None else averaged.module
    xtr, dtr, ytr = data["train"]
    n = len(xtr)
    best, best_state, bad, lr = -1.0, None, 0, args.lr
    samples, train_time, curves = 0, 0.0, []
    for epoch in range(args.max_epochs):
        model.train()
        perm = torch.randperm(n, device=args.device)
        t0, loss_sum, batches = time.perf_counter(), 0.0, 0
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            logits = model(xtr[idx], None if dtr is None else dtr[idx], labels=ytr[idx])
            bce = F.binary_cross_entropy_with_logits(logits, ytr[idx])
            loss = bce + model.auxiliary_loss(ytr[idx])
            if emb_reg and tables[0].requires_grad:
                loss = loss + embedding_l2_penalty(tables, emb_reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            if averaged is not None:
                update_weight_average(averaged, model)
            samples += len(idx)
            loss_sum, batches = loss_sum + bce.item(), batches + 1
        train_time += time.perf_counter() - t0
        if averaged is not None and batch_norms(scored):
            # the averaged BatchNorm statistics do not belong to the averaged weights: recompute them, as the
            # training pipeline does (precise BN over the epoch's last 16 batches)
            last = [perm[i:i + args.batch_size] for i in range(max(0, n - 16 * args.batch_size), n, args.batch_size)]
            recompute_batch_norm(scored, [Batch(xtr[j], xtr.new_zeros((len(j), 0), dtype=torch.float32) if dtr is None
                                                else dtr[j], ytr[j]) for j in last])
        vauc, vll = evaluate(scored, data["valid"])
        curves.append({"epoch": epoch + 1, "lr": lr, "train_logloss": loss_sum / batches,
                       "valid_auc": vauc, "valid_logloss": vll})
        extra = model.routing_stats() if getattr(model, "routing_stats", None) else {}
        print(f"[{name}] epoch {epoch + 1} lr {lr:.0e} train logloss {loss_sum / batches:.5f} valid AUC {vauc:.5f} "
              f"logloss {vll:.5f} ({train_time:.0f}s) {json.dumps(extra) if extra else ''}", flush=True)
        if vauc > best:
            best, bad = vauc, 0
            best_state = {k: v.clone() for k, v in scored.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                break
            lr *= args.lr_factor
            if args.restore_best_at_step:
                model.load_state_dict(best_state)
            for g in opt.param_groups:
                g["lr"] = lr
            if args.freeze_embeddings_at_step:  # Adam skips parameters without a gradient
                for table in tables:
                    table.requires_grad_(False)
    scored.load_state_dict(best_state)
    tauc, tll = evaluate(scored, data["test"])
    print(f"[{name}] TEST AUC {tauc:.5f} logloss {tll:.5f}", flush=True)
    return dict(model=name, variant=args.variant, seed=args.seed, emb_reg=emb_reg,
                weight_decay=args.weight_decay, params=model.num_parameters(),
                mflops=model.flops_per_example() / 1e6, valid_auc=best, test_auc=tauc, test_logloss=tll,
                samples_per_s=samples / max(train_time, 1e-9), epochs=len(curves), curves=curves)


def append(path: str | None, row: dict) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def read(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], extra: dict[str, callable] | None = None) -> str:
    """One line per (model, variant): mean ± sample std over its seeds. ``extra``: column -> f(rows)."""
    extra = extra or {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r.get("variant", "")), []).append(r)
    head = ["model", "variant", "seeds", "params", "MFLOPs/example", "test AUC", "test logloss", *extra,
            "train samples/s", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for (model, variant), g in groups.items():
        cells = [model, variant or "preset", str(len(g)), f"{g[0]['params']:,}", f"{g[0]['mflops']:.3f}",
                 _mean_std([r["test_auc"] for r in g], 4), _mean_std([r["test_logloss"] for r in g], 4),
                 *(f(g) for f in extra.values()),
                 f"{statistics.mean(r['samples_per_s'] for r in g):,.0f}",
                 "/".join(str(r["epochs"]) for r in g)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_table(rows: list[dict]) -> str:
    """Per run (model, variant, seed): validation AUC and train logloss at each epoch, ``valid / train``;
    ``*`` marks the best-validation epoch (the weights tested)."""
    n = max(len(r["curves"]) for r in rows)
    head = ["model", "variant", "seed", *(str(e) for e in range(1, n + 1))]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * n]
    for r in sorted(rows, key=lambda r: (r["model"], r.get("variant", ""), r["seed"])):
        best = max(range(len(r["curves"])), key=lambda i: r["curves"][i]["valid_auc"])
        cells = [f"{c['valid_auc']:.4f}{'*' if i == best else ''} / {c['train_logloss']:.3f}"
                 for i, c in enumerate(r["curves"])]
        lines.append("| " + " | ".join([r["model"], r.get("variant", "") or "preset", str(r["seed"]), *cells,
                                        *([""] * (n - len(cells)))]) + " |")
    return "\n".join(lines)
