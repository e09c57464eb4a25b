"""Model quality on the synthetic generator at scale (default 1M events) — not a test.

The generator (``mixrec.features.synthetic``) draws clicks from a known logistic model with planted 2nd- and
3rd-order interactions and dense features, so two references come with the data:

* the **oracle**: the hidden click probability itself, scored on the test rows (the best AUC possible);
* **logistic regression** on the same features (one-hot ids + the dense values): first order only.

Each model's row gives its test AUC and its **share of the gap** from logistic regression to the oracle,
``(AUC − AUC_LR) / (AUC_oracle − AUC_LR)``. Features per event: ids user, item, device, hour and the
point-in-time user snapshot (age bucket, region) and item attributes (category, brand); dense activity (the
snapshot of the event's day), log price, quality. Split by time 80/10/10. Training protocol:
``bench/ctr_train.py``.

Usage (from the repo root)::

    OMP_NUM_THREADS=1 python bench/synthetic_quality.py --models dnn,dcnv2 --seed 2021 --results /tmp/syn.jsonl
    python bench/synthetic_quality.py --table-only --results /tmp/syn.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from ctr_train import add_training_args, append, auc, fit, read, table

from mixrec.features.synthetic import NUM_DEVICES, NUM_HOURS, GroundTruth, generate
from mixrec.models import FeatureLayout, build_model

TOWER = dict(tower_dims=(256, 256), dropout=0.1)
# name -> (architecture, kwargs, embedding L2); embedding 16 everywhere
CONFIGS: dict[str, tuple[str, dict, float]] = {
    "dnn": ("dnn", dict(embedding_dim=16, hidden_dims=(256, 256, 256), batch_norm=True, dropout=0.1), 1e-4),
    "dcnv2": ("dcnv2", dict(embedding_dim=16, num_cross_layers=3, structure="parallel", dnn_dims=(256, 256, 256),
                            batch_norm=True, dropout=0.1), 1e-4),
    "wukong": ("wukong", dict(embedding_dim=16, num_layers=2, num_fm_embeddings=8, num_lcb_embeddings=8, fm_rank=16,
                              fmb_mlp_dims=(256,), top_mlp_dims=(256, 256), dropout=0.1), 1e-4),
    "rankmixer": ("rankmixer", dict(embedding_dim=16, num_tokens=4, d_model=64, num_layers=2, ffn_ratio=2, **TOWER),
                  1e-4),
    "tokenmixer_large": ("tokenmixer_large", dict(embedding_dim=16, num_tokens=5, d_model=48, num_heads=4,
                                                  num_layers=2, ffn_ratio=2, **TOWER), 1e-4),
    "unimixer": ("unimixer", dict(embedding_dim=16, num_tokens=4, d_model=64, num_layers=2, block_size=8,
                                  ffn_ratio=2, tau_anneal_steps=300, **TOWER), 1e-4),
}


def load(num_events: int, num_users: int, num_items: int, days: int, seed: int):
    """Splits as (ids [N, 8], dense [N, 3], label [N]) tensors, the layout, and the oracle's test AUC."""
    t = generate(num_events, num_users, num_items, days, seed)
    truth = GroundTruth(num_users, num_items, days, seed)
    ev = t.events
    user, item = ev["user_id"].to_numpy(), ev["item_id"].to_numpy()
    device, hour = ev["device"].to_numpy(), ev["hour"].to_numpy()
    day = ((ev["event_timestamp"] - ev["event_timestamp"].dt.normalize().min()).dt.days).to_numpy()
    day = np.clip(day, 0, days - 1)  # the daily snapshot in force at the event (snapshots are at 00:00)
    brands = int(truth.brand.max()) + 1
    ids = np.stack([user, item, device, hour, truth.age_bucket[user], truth.region[user],
                    truth.category[item], truth.brand[item]], 1) + 1  # 0 = OOV
    cards = (num_users, num_items, NUM_DEVICES, NUM_HOURS, int(truth.age_bucket.max()) + 1,
             int(truth.region.max()) + 1, int(truth.category.max()) + 1, brands)
    dense = np.stack([truth.activity[day, user], np.log(truth.price[item]), truth.quality[item]], 1)
    label = ev["label"].to_numpy().astype(np.float32)
    n = len(ev)
    cut = [0, int(0.8 * n), int(0.9 * n), n]  # events are sorted by time
    mu, sd = dense[: cut[1]].mean(0), dense[: cut[1]].std(0) + 1e-6
    dense = ((dense - mu) / sd).astype(np.float32)
    splits = {}
    for name, a, b in zip(("train", "valid", "test"), cut[:-1], cut[1:], strict=True):
        splits[name] = (torch.from_numpy(ids[a:b].astype(np.int64)), torch.from_numpy(dense[a:b]),
                        torch.from_numpy(label[a:b]))
    oracle = truth.event_probability(ev.iloc[cut[2]:])
    layout = FeatureLayout(cardinalities=tuple(c + 1 for c in cards), n_dense=3)
    return splits, layout, auc(label[cut[2]:], oracle), cards


def logistic_regression_auc(splits: dict, cards: tuple[int, ...]) -> float:
    """First-order reference: scikit-learn's logistic regression on one-hot ids + dense values."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    offsets = np.concatenate([[0], np.cumsum(np.asarray(cards) + 1)])[:-1]

    def design(split):
        ids, dense, _ = split
        cols = (ids.numpy() + offsets).ravel()
        rows = np.repeat(np.arange(len(ids)), ids.shape[1])
        onehot = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(ids), int(sum(cards) + len(cards))))
        return sparse.hstack([onehot, sparse.csr_matrix(dense.numpy())]).tocsr()

    clf = LogisticRegression(C=1.0, max_iter=300)
    clf.fit(design(splits["train"]), splits["train"][2].numpy())
    return auc(splits["test"][2].numpy(), clf.predict_proba(design(splits["test"]))[:, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--data-seed", type=int, default=7)
    add_training_args(p, max_epochs=10)
    args = p.parse_args()
    if args.table_only:
        rows = read(args.results)
        ref = {r["model"]: r["test_auc"] for r in rows if r["model"] in ("oracle", "logistic_regression")}
        models = [r for r in rows if r["model"] not in ref]
        gap = lambda g: f"{statistics.mean((r['test_auc'] - ref['logistic_regression']) / (ref['oracle'] - ref['logistic_regression']) for r in g):.1%}"  # noqa: E731
        print(f"oracle test AUC {ref['oracle']:.4f}; logistic regression {ref['logistic_regression']:.4f}")
        print(table(models, {"share of LR→oracle gap": gap}))
        return
    torch.set_num_threads(args.threads)
    splits, layout, oracle_auc, cards = load(args.events, args.users, args.items, args.days, args.data_seed)
    print(f"{args.events:,} events; train {len(splits['train'][0]):,}; oracle test AUC {oracle_auc:.5f}", flush=True)
    existing = {r["model"] for r in read(args.results)} if args.results and Path(args.results).exists() else set()
    if "oracle" not in existing:
        append(args.results, {"model": "oracle", "test_auc": oracle_auc})
    if "logistic_regression" not in existing:
        lr_auc = logistic_regression_auc(splits, cards)
        print(f"logistic regression test AUC {lr_auc:.5f}", flush=True)
        append(args.results, {"model": "logistic_regression", "test_auc": lr_auc})
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        arch, kwargs, emb_reg = CONFIGS[name]
        torch.manual_seed(args.seed)
        model = build_model(arch, layout, **{**kwargs, **json.loads(args.override)})
        append(args.results, fit(name, model, emb_reg if args.emb_reg is None else args.emb_reg, splits, args))


if __name__ == "__main__":
    main()
