"""GPU run, one script: bf16 peak, per-model MFU, multi-GPU DDP training through Ray Train, ranking latency.

    .venv/bin/python bench/gpu.py                          # every GPU of the machine, the `_large` sizes
    .venv/bin/python bench/gpu.py --models rankmixer,unimixer --rows 400000 --json gpu.json

Every clock read follows ``torch.cuda.synchronize()``: CUDA launches are asynchronous, so an unsynchronised
timer measures the launch queue, not the work. Every rate is a ratio against a baseline taken in this run:

1. Peak: bf16 8192x8192 matmuls, measured before and after each model; MFU compares a bf16-autocast model (its
   matmuls run in bf16) against that bf16 peak, never an fp32 model against a bf16 peak.
2. Per model, one GPU: forward + backward + fused Adam steps under bf16 autocast; achieved FLOP/s =
   3 x analytic forward FLOPs per example x samples/s.
3. DDP: the same model through `mixrec.pipelines.train.train` (Ray Train, one worker per GPU, bf16, global batch
   = per-GPU batch x GPUs) on synthetic rows; its samples/s against N x the single-GPU bare rate (scaling
   efficiency) and its MFU against N x peak.
4. Ranking latency: 200 candidates scored by the model in eval mode on the GPU and on the CPU, p50/p99 of
   single requests in this process (the serving floor a Serve replica on a GPU adds its HTTP hops to).

Without a GPU it says so and exits 0: CI and laptops never run it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mixrec.models import FeatureLayout, build_model

CRITEO_LIKE = FeatureLayout(cardinalities=(1000,) * 26, n_dense=13)


def synced_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def bf16_peak(seconds: float = 2.0, n: int = 8192) -> float:
    """Best bf16 matmul rate (FLOP/s) over ``seconds`` on the current GPU."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = synced_clock()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * n**3 / (synced_clock() - t0))
    return best


def random_batch(batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cat = torch.stack([torch.randint(0, c, (batch,)) for c in CRITEO_LIKE.cardinalities], 1).to(device)
    return cat, torch.randn(batch, CRITEO_LIKE.n_dense, device=device), torch.randint(0, 2, (batch,), device=device).float()


def bf16_step_rate(model, batch: int, steps: int) -> float:
    """Training samples/s of ``model`` on one GPU under bf16 autocast, fused Adam."""
    model.to("cuda").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    cat, dense, y = random_batch(batch, "cuda")

    def one():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(cat, dense)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y) + model.auxiliary_loss(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one()
    t0 = synced_clock()
    for _ in range(steps):
        one()
    return batch * steps / (synced_clock() - t0)


def ranking_latency(model, device: str, candidates: int = 200, reps: int = 300) -> dict[str, float]:
    """p50/p99 milliseconds to score one request of ``candidates`` rows (eval, no grad, bf16 on GPU)."""
    model.to(device).eval()
    cat, dense, _ = random_batch(candidates, device)
    clock = synced_clock if device == "cuda" else time.perf_counter
    times = []
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for i in range(reps + 10):
            t0 = clock()
            model(cat, dense).float().cpu()  # the response needs the scores on the host
            if i >= 10:
                times.append((clock() - t0) * 1e3)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))]}


def ddp_rate(model_name: str, gpus: int, rows: int, worker_batch: int) -> float:
    """Global training samples/s of ``model_name`` through Ray Train, one worker per GPU, bf16 (last epoch)."""
    import tempfile
    from pathlib import Path

    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.features.synthetic import generate
    from mixrec.pipelines.config import TrainConfig
    from mixrec.pipelines.preprocess import fit_preprocessor
    from mixrec.pipelines.runtime import init_ray
    from mixrec.pipelines.train import train

    ray = init_ray()
    t = generate(num_events=rows, num_users=20_000, num_items=5_000, days=7, seed=1)
    frame = t.events.merge(t.users.drop_duplicates("user_id"), on="user_id", suffixes=("", "_u")).merge(
        t.items, on="item_id", suffixes=("", "_i"))[list(schema.required_columns)]
    ds = ray.data.from_pandas(frame)
    pre = fit_preprocessor(ds, schema, min_count=1, clip_sigma=5.0)
    prepared = ds.map_batches(pre.transform_batch, batch_format="pandas").materialize()
    valid = prepared.limit(8192).materialize()
    cpus = max(1.0, (ray.cluster_resources().get("CPU", 2.0) - 1.0) / gpus)  # one CPU left for Ray Data
    cfg = TrainConfig(num_workers=gpus, cpus_per_worker=cpus, use_gpu=True, precision="bf16", epochs=2,
                      batch_size=worker_batch * gpus)
    size = f"{model_name}_large"
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train(prepared, valid, pre, size, {}, cfg, Path(tmp), run_name="gpu-ddp")
    return outcome.last_metrics["train_samples_per_s"] * gpus  # each worker reports its own rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rankmixer,rankmixer_moe,tokenmixer_large,unimixer,wukong,dnn,dcnv2")
    ap.add_argument("--size", default="large")
    ap.add_argument("--batch", type=int, default=4096, help="per-GPU batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ddp-model", default="rankmixer")
    ap.add_argument("--rows", type=int, default=400_000, help="synthetic rows for the DDP run")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (this script is for GPU machines)")
        return
    gpus = torch.cuda.device_count()
    print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, per-GPU batch {args.batch}")
    out = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "models": []}
    print("| model | size | parameters | MFLOPs/example | samples/s | achieved TFLOP/s | bf16 peak TFLOP/s | MFU "
          "| rank 200: GPU p50 / p99 ms | CPU p50 / p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        label = f"{name}_{args.size}"
        try:
            model = build_model(label, CRITEO_LIKE)
        except ValueError:
            label, model = name, build_model(name, CRITEO_LIKE)
        peak_before = bf16_peak()
        rate = bf16_step_rate(model, args.batch, args.steps)
        peak = (peak_before + bf16_peak()) / 2
        achieved = 3 * model.flops_per_example() * rate
        gpu_latency, cpu_latency = ranking_latency(model, "cuda"), ranking_latency(model, "cpu", reps=50)
        row = {"model": name, "size": label, "parameters": model.num_parameters(),
               "mflops_per_example": model.flops_per_example() / 1e6, "samples_per_s": rate,
               "achieved_tflops": achieved / 1e12, "peak_tflops": peak / 1e12, "mfu": achieved / peak,
               "latency_gpu": gpu_latency, "latency_cpu": cpu_latency}
        out["models"].append(row)
        print(f"| {name} | {label} | {row['parameters']:,} | {row['mflops_per_example']:.1f} | {rate:,.0f} | "
              f"{row['achieved_tflops']:.1f} | {row['peak_tflops']:.0f} | {row['mfu']:.1%} | "
              f"{gpu_latency['p50_ms']:.2f} / {gpu_latency['p99_ms']:.2f} | "
              f"{cpu_latency['p50_ms']:.1f} / {cpu_latency['p99_ms']:.1f} |", flush=True)
        del model
        torch.cuda.empty_cache()
    single = next((r for r in out["models"] if r["model"] == args.ddp_model), None)
    if single is not None:
        rate = ddp_rate(args.ddp_model, gpus, args.rows, args.batch)
        peak = single["peak_tflops"] * 1e12
        flops = single["mflops_per_example"] * 1e6
        out["ddp"] = {"model": args.ddp_model, "gpus": gpus, "global_samples_per_s": rate,
                      "scaling_vs_bare_single_gpu": rate / (gpus * single["samples_per_s"]),
                      "mfu": 3 * flops * rate / (gpus * peak)}
        print(f"Ray Train DDP, {args.ddp_model}_{args.size}, {gpus} GPU(s), bf16: {rate:,.0f} samples/s; "
              f"{out['ddp']['scaling_vs_bare_single_gpu']:.2f} x the bare single-GPU loop x {gpus}; "
              f"MFU {out['ddp']['mfu']:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
