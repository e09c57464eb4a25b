"""Sparse MoE against the masked dense reference, CPU, in one run (issue 15 item 3).

    OMP_NUM_THREADS=1 .venv/bin/python bench/moe.py            # ~2-3 min on one core
    .venv/bin/python bench/moe.py --batch 512 --d-model 64     # smaller

1. Layer eval throughput: one MoE layer (SP-MoE at E=4/k=2 and E=8/k=2; DTSI at its achieved ReLU ratio and
   with the router bias lowered to ~0.25), sparse grouped dispatch vs the masked reference on the same weights.
   Goal: sparse/masked >= 0.7 / active ratio.
2. Model eval throughput: tokenmixer_large_moe, unimixer_moe, rankmixer_moe, sparse vs masked (the non-MoE
   work, token mixing, tokenizer and tower, is the same in both, so the model-level ratio is lower).
3. Training throughput (forward + backward + fused Adam): SP-MoE models (sparse) against the dense model of
   the same total FFN width (same parameters), and against their own masked reference. Goal: above dense.

Every figure is a ratio of two timings taken in this run (best of a few repeats), printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mixrec.models import FeatureLayout, build_model
from mixrec.models.moe import DTSIPerTokenMoE, SPMoESwiGLU

LAYOUT = FeatureLayout(cardinalities=(1000,) * 26, n_dense=13)  # Criteo-like


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speedup(sparse, masked, *args, repeats: int) -> float:
    """Time of ``masked(*args)`` over time of ``sparse(*args)`` (no grad)."""
    with torch.no_grad():
        return best_time(lambda: masked(*args), repeats) / best_time(lambda: sparse(*args), repeats)


def pair(make, **kw):
    """The same layer or model twice (sparse, masked) with equal weights."""
    torch.manual_seed(0)
    sparse, masked = make(impl="sparse", **kw), make(impl="masked", **kw)
    masked.load_state_dict(sparse.state_dict())
    return sparse.eval(), masked.eval()


def layer_rows(batch: int, tokens: int, d: int, repeats: int) -> list[tuple]:
    rows = []
    x = torch.randn(batch, tokens, d)
    for e, k in ((4, 2), (8, 2)):
        sparse, masked = pair(lambda impl, e=e, k=k: SPMoESwiGLU(tokens, d, 4 * d, e, k, 2.0, impl=impl))
        rows.append((f"SP-MoE layer E={e} k={k}", k / e, speedup(sparse, masked, x, repeats=repeats), 0.7 * e / k))
    for bias in (0.0, -0.5):
        sparse, masked = pair(lambda impl: DTSIPerTokenMoE(tokens, d, d, 4, impl=impl))
        with torch.no_grad():
            for m in (sparse, masked):
                m.router_infer_bias.fill_(bias)
            ratio = float((sparse.gates(x, "infer") > 0).float().mean())
        speed = speedup(sparse, masked, x, repeats=repeats)
        rows.append((f"DTSI layer E=4 (router bias {bias})", ratio, speed, 0.7 / ratio))
    return rows


def inputs(batch: int):
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in LAYOUT.cardinalities], 1)
    return cat, torch.randn(batch, LAYOUT.n_dense, generator=g), torch.randint(0, 2, (batch,), generator=g).float()


MODELS = {  # total FFN width 4·D in every MoE model; dense twin: the same keywords without experts
    "tokenmixer_large_moe": dict(num_tokens=16, num_heads=16, num_layers=2, ffn_ratio=4, num_experts=4, top_k=2,
                                 embedding_dim=16),
    "unimixer_moe": dict(num_tokens=16, num_layers=2, block_size=32, ffn_ratio=4, num_experts=4, top_k=2,
                         embedding_dim=16, tau_end=0.2),
    "rankmixer_moe": dict(num_tokens=16, num_layers=2, ffn_ratio=1, num_experts=4, embedding_dim=16),
}
DENSE_TWIN = {"tokenmixer_large_moe": "tokenmixer_large", "unimixer_moe": "unimixer"}


def model_eval_rows(batch: int, d: int, repeats: int) -> list[tuple]:
    rows = []
    cat, dense, _ = inputs(batch)
    for name, kw in MODELS.items():
        sparse, masked = pair(lambda impl, name=name, kw=kw: build_model(name, LAYOUT, d_model=d, moe_impl=impl, **kw))
        speed = speedup(sparse, masked, cat, dense, repeats=repeats)
        ratio = sparse.active_flops_per_example() / masked.flops_per_example()  # whole-model compute ratio
        moe_ratio = sparse.routing_stats().get("eval_active_ratio", sparse.routing_stats()["active_ratio"])
        rows.append((f"{name} model eval", moe_ratio, speed, 0.7 / ratio))
    return rows


def train_speed(model, batch: int, steps: int) -> float:
    cat, dense, y = inputs(batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model.train()

    def step():
        loss = F.binary_cross_entropy_with_logits(model(cat, dense), y) + model.auxiliary_loss(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / best_time(step, steps)


def train_rows(batch: int, d: int, steps: int) -> list[tuple]:
    rows = []
    for name, twin in DENSE_TWIN.items():
        kw = MODELS[name]
        dense_kw = {k: v for k, v in kw.items() if k not in ("num_experts", "top_k")}
        torch.manual_seed(0)
        base = train_speed(build_model(twin, LAYOUT, d_model=d, **dense_kw), batch, steps)
        sparse = train_speed(build_model(name, LAYOUT, d_model=d, **kw), batch, steps)
        masked = train_speed(build_model(name, LAYOUT, d_model=d, moe_impl="masked", **kw), batch, steps)
        rows.append((f"{name} train vs {twin} (same width)", kw["top_k"] / kw["num_experts"], sparse / base, 1.0))
        rows.append((f"{name} train vs its masked reference", kw["top_k"] / kw["num_experts"], sparse / masked, 1.0))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024, help="eval batch (training uses half)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), eval batch {a.batch}, "
          f"D={a.d_model} (layers: T=16, D={2 * a.d_model})\n")
    print("| what | active ratio | speed: sparse / reference | goal |")
    print("|---|---:|---:|---:|", flush=True)
    for part in (lambda: layer_rows(a.batch, 16, 2 * a.d_model, a.repeats),
                 lambda: model_eval_rows(a.batch, a.d_model, a.repeats),
                 lambda: train_rows(a.batch // 2, a.d_model, a.repeats)):
        for what, ratio, speed, goal in part():
            print(f"| {what} | {ratio:.2f} | {speed:.2f}x | >= {goal:.2f}x |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
