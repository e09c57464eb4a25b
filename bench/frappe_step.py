"""The BARS DCNv2 training step alone on Frappe's field layout: how fast the model trains with no data path.

    nice -n -10 .venv/bin/python bench/frappe_step.py --threads 2 --batch 4096
    nice -n -10 .venv/bin/python bench/frappe_step.py --threads 1 --batch 2048 --compile

Random ids of Frappe_x1's cardinalities, the model of ``bench/fuxictr_parity.py``, BCE + fused Adam, 5 warm-up
steps then 30 timed ones; prints ms/step and samples/s. The ceiling that ``mixrec run`` and FuxiCTR are compared
against in docs/benchmarks.md (two one-thread workers of 2,048 rows vs one two-thread process of 4,096).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mixrec.models import FeatureLayout, build_model

FRAPPE = FeatureLayout(cardinalities=(955, 4083, 8, 8, 3, 4, 3, 12, 81, 233), n_dense=0)
MODEL = {"embedding_dim": 10, "num_cross_layers": 4, "structure": "parallel", "dnn_dims": (400, 400, 400),
         "batch_norm": True, "dropout": 0.2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("dcnv2", FRAPPE, **MODEL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.stack([torch.randint(0, c, (args.batch,)) for c in FRAPPE.cardinalities], 1)
    y = torch.rand(args.batch).round()
    forward = torch.compile(model) if args.compile else model

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(forward(x, None), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - t0) / args.steps
    print(f"threads {args.threads}, batch {args.batch}, compile {args.compile}: {seconds * 1000:.1f} ms/step, "
          f"{args.batch / seconds:,.0f} samples/s")


if __name__ == "__main__":
    main()
