"""Frappe (BARS Frappe_x1) quality benchmark of the mixrec model zoo — not a test.

BARS-like protocol: all 10 fields categorical, re-indexed per field from the train split (0 = OOV),
embedding 10 where the model allows, Adam lr 1e-3, batch 4096, BCE, early stopping on validation AUC with
patience 2 (FuxiCTR-style: lr × 0.1 when validation AUC does not improve, best weights restored for test),
L2 on the embedding table (FuxiCTR ``embedding_regularizer``).

Usage (from the repo root)::

    OMP_NUM_THREADS=1 python bench/frappe_quality.py --models dnn,dcnv2 --results /tmp/frappe.jsonl
    python bench/frappe_quality.py --table-only --results /tmp/frappe.jsonl

Reads ``train_reconstructed.parquet``, ``valid.parquet``, ``test.parquet`` from ``--data``
(default ``../shared/data/frappe`` relative to the repo root). Prints a markdown table:
model, params, MFLOPs/example, test AUC, test logloss, train samples/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from mixrec.models import FeatureLayout, build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]

# name -> (architecture, kwargs, embedding L2 coefficient)
CONFIGS: dict[str, tuple[str, dict, float]] = {
    "dnn": ("dnn", dict(embedding_dim=10, hidden_dims=(400, 400, 400), batch_norm=True, dropout=0.2), 0.05),
    "dcnv2": ("dcnv2", dict(embedding_dim=10, num_cross_layers=4, structure="parallel",
                            dnn_dims=(400, 400, 400), batch_norm=True, dropout=0.2), 0.05),
    "wukong": ("wukong", dict(embedding_dim=10, num_layers=3, num_fm_embeddings=8, num_lcb_embeddings=8,
                              fm_rank=24, fmb_mlp_dims=(400, 400), top_mlp_dims=(400, 400), dropout=0.2), 0.05),
    "rankmixer": ("rankmixer", dict(embedding_dim=10, num_tokens=5, d_model=80, num_layers=2, ffn_ratio=4,
                                    tower_dims=(400, 400), dropout=0.2), 0.05),
    "rankmixer_moe": ("rankmixer_moe", dict(embedding_dim=10, num_tokens=5, d_model=80, num_layers=2, ffn_ratio=2,
                                            num_experts=4, target_active_ratio=0.5, tower_dims=(400, 400),
                                            dropout=0.2), 0.05),
    "tokenmixer_large": ("tokenmixer_large", dict(embedding_dim=10, num_tokens=6, d_model=48, num_heads=4,
                                                  num_layers=4, ffn_ratio=2, tower_dims=(400, 400), dropout=0.2), 0.05),
    "tokenmixer_large_moe": ("tokenmixer_large_moe", dict(embedding_dim=10, num_tokens=6, d_model=48, num_heads=4,
                                                          num_layers=4, ffn_ratio=4, num_experts=4, top_k=2,
                                                          moe_alpha=2.0, tower_dims=(400, 400), dropout=0.2), 0.05),
    "unimixer": ("unimixer", dict(embedding_dim=10, num_tokens=5, d_model=64, num_layers=4, block_size=8,
                                  ffn_ratio=2, tau_anneal_steps=300, tower_dims=(400, 400), dropout=0.2), 0.05),
    "unimixer_lite": ("unimixer_lite", dict(embedding_dim=10, num_tokens=5, d_model=64, num_layers=4, block_size=4,
                                            num_basis=4, ffn_ratio=2, tau_anneal_steps=300, tower_dims=(400, 400),
                                            dropout=0.2), 0.05),
}


def load(data: Path):
    tables = {s: pq.read_table(data / f"{s}.parquet").to_pydict() for s in ("train_reconstructed", "valid", "test")}
    vocab = []
    for f in FIELDS:
        uniq = np.unique(np.asarray(tables["train_reconstructed"][f]))
        vocab.append({int(v): i + 1 for i, v in enumerate(uniq)})  # 0 = OOV
    out = {}
    for s, t in tables.items():
        cat = np.stack([np.array([vocab[j].get(int(v), 0) for v in t[f]], dtype=np.int64) for j, f in enumerate(FIELDS)], 1)
        out[s] = (torch.from_numpy(cat), torch.tensor(t["label"], dtype=torch.float32))
    layout = FeatureLayout(cardinalities=tuple(len(v) + 1 for v in vocab), n_dense=0)
    return layout, out


def auc(y: np.ndarray, p: np.ndarray) -> float:
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # average ranks for ties
    _, inv, counts = np.unique(ps, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    avg = cum - (counts - 1) / 2.0
    ranks[order] = avg[inv]
    npos = y.sum()
    nneg = len(y) - npos
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


@torch.no_grad()
def evaluate(model, cat, y, bs=16384):
    model.eval()
    logits = torch.cat([model(cat[i:i + bs]) for i in range(0, len(cat), bs)])
    ll = F.binary_cross_entropy_with_logits(logits, y).item()
    return auc(y.numpy(), torch.sigmoid(logits).double().numpy()), ll


def run(name: str, data: dict, layout: FeatureLayout, args) -> dict:
    arch, kwargs, emb_reg = CONFIGS[name]
    kwargs = {**kwargs, **json.loads(args.override)}
    if args.emb_reg is not None:
        emb_reg = args.emb_reg
    torch.manual_seed(args.seed)
    model = build_model(arch, layout, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    table = model.embedding.table.weight
    if args.emb_init is not None:
        with torch.no_grad():
            table.normal_(std=args.emb_init)
    xtr, ytr = data["train_reconstructed"]
    n = len(xtr)
    best, best_state, bad, lr = -1.0, None, 0, args.lr
    samples, train_time, epochs = 0, 0.0, 0
    for epoch in range(args.max_epochs):
        model.train()
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            logits = model(xtr[idx], labels=ytr[idx])
            loss = F.binary_cross_entropy_with_logits(logits, ytr[idx]) + model.auxiliary_loss(ytr[idx])
            if emb_reg:
                loss = loss + emb_reg / 2 * table.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += len(idx)
        train_time += time.perf_counter() - t0
        epochs += 1
        vauc, vll = evaluate(model, *data["valid"])
        extra = model.routing_stats() if hasattr(model, "routing_stats") else {}
        print(f"[{name}] epoch {epoch + 1} lr {lr:.0e} valid AUC {vauc:.5f} logloss {vll:.5f} "
              f"({train_time:.0f}s) {json.dumps(extra) if extra else ''}", flush=True)
        if vauc > best:
            best, bad = vauc, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                break
            lr *= 0.1
            for g in opt.param_groups:
                g["lr"] = lr
    model.load_state_dict(best_state)
    tauc, tll = evaluate(model, *data["test"])
    row = dict(model=name, arch=arch, kwargs=kwargs, emb_reg=emb_reg, params=model.num_parameters(),
               mflops=model.flops_per_example() / 1e6, valid_auc=best, test_auc=tauc, test_logloss=tll,
               samples_per_s=samples / max(train_time, 1e-9), epochs=epochs)
    print(f"[{name}] TEST AUC {tauc:.5f} logloss {tll:.5f}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | params | MFLOPs/example | test AUC | test logloss | train samples/s | epochs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['mflops']:.3f} | {r['test_auc']:.4f} | "
                     f"{r['test_logloss']:.4f} | {r['samples_per_s']:,.0f} | {r['epochs']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT / ".." / "shared" / "data" / "frappe"))
    p.add_argument("--models", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--emb-reg", type=float, default=None, help="override the per-model embedding L2")
    p.add_argument("--emb-init", type=float, default=None, help="re-initialise the embedding table N(0, std²)")
    p.add_argument("--override", default="{}", help="JSON dict of model kwargs overriding the preset")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None, help="append one JSON line per model here")
    p.add_argument("--table-only", action="store_true", help="print the table of --results and exit")
    args = p.parse_args()
    if args.table_only:
        rows = [json.loads(x) for x in Path(args.results).read_text().splitlines() if x.strip()]
        print(table(rows))
        return
    torch.set_num_threads(args.threads)
    layout, data = load(Path(args.data))
    rows = []
    for name in args.models.split(","):
        row = run(name.strip(), data, layout, args)
        rows.append(row)
        if args.results:
            with open(args.results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
