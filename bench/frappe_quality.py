"""Frappe (BARS Frappe_x1) quality benchmark of the mixrec model zoo — not a test.

BARS-like protocol: all 10 fields categorical, re-indexed per field from the train split (0 = OOV),
embedding 10 where the model allows, Adam lr 1e-3, batch 4096, BCE, early stopping on validation AUC with
patience 2 (FuxiCTR-style: lr × 0.1 when validation AUC does not improve, best weights restored for test),
L2 on the embedding table (FuxiCTR ``embedding_regularizer``).

The loop, the curves and the mean ± std table are ``bench/ctr_train.py``. Usage (from the repo root)::

    OMP_NUM_THREADS=1 python bench/frappe_quality.py --models dnn,dcnv2 --seed 2021 --results /tmp/frappe.jsonl
    python bench/frappe_quality.py --table-only --results /tmp/frappe.jsonl [--curves]

Reads ``train_reconstructed.parquet``, ``valid.parquet``, ``test.parquet`` from ``--data``
(default ``../shared/data/frappe`` relative to the repo root). Prints a markdown table:
per model and variant, test AUC and logloss as mean ± std over the seeds in the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from ctr_train import add_training_args, append, curves_table, fit, read, table

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
    # The UniMixer authors' public Frappe recipe (one token per field, 2 blocks, fixed τ 0.2, embedding L2 5e-3;
    # they also use weight decay 5e-5: pass --weight-decay 5e-5) with embedding 128 but d_model 64 instead of
    # their 128 (2.5× cheaper, fits the 2-core host); TokenMixer-Large the same with d_model 32 (+ the global
    # token). Why these and not the presets: docs/models.md, "Frappe quality".
    "unimixer_authors": ("unimixer", dict(embedding_dim=128, num_tokens=10, d_model=64, num_layers=2, block_size=8,
                                          ffn_ratio=2, tau_start=0.2, tau_end=0.2, tau_anneal_steps=0,
                                          tower_dims=(400, 400), dropout=0.2), 0.005),
    "tokenmixer_large_authors": ("tokenmixer_large", dict(embedding_dim=128, num_tokens=11, d_model=32, num_heads=4,
                                                          num_layers=2, ffn_ratio=2, tower_dims=(400, 400),
                                                          dropout=0.2), 0.005),
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
        out["train" if s == "train_reconstructed" else s] = (
            torch.from_numpy(cat), None, torch.tensor(t["label"], dtype=torch.float32))
    layout = FeatureLayout(cardinalities=tuple(len(v) + 1 for v in vocab), n_dense=0)
    return layout, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT / ".." / "shared" / "data" / "frappe"))
    p.add_argument("--models", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    p.add_argument("--curves", action="store_true", help="with --table-only: also the per-epoch curves")
    add_training_args(p)
    args = p.parse_args()
    if args.table_only:
        rows = read(args.results)
        print(table(rows))
        if args.curves:
            print("\n" + curves_table(rows))
        return
    torch.set_num_threads(args.threads)
    layout, data = load(Path(args.data))
    rows = []
    for name in (m.strip() for m in args.models.split(",")):
        arch, kwargs, emb_reg = CONFIGS[name]
        torch.manual_seed(args.seed)
        model = build_model(arch, layout, **{**kwargs, **json.loads(args.override)})
        rows.append(fit(name, model, emb_reg if args.emb_reg is None else args.emb_reg, data, args))
        append(args.results, rows[-1])
    print(table(rows))


if __name__ == "__main__":
    main()
