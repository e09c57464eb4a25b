"""Training speed and MFU per model, and Ray Train's overhead against a bare PyTorch loop, in one run.

    .venv/bin/python bench/speed.py                       # every model at its `_large` size, CPU fp32
    .venv/bin/python bench/speed.py --models unimixer,tokenmixer_large --size base --batch 512

On a GPU, bench/gpu.py is the fuller run (multi-GPU DDP, ranking latency).

1. Peak: the machine's dense matmul rate (fp32 2048x2048 on CPU, bf16 8192x8192 on a GPU), measured right
   before and right after each model, so that MFU is a ratio of two rates taken under the same load.
2. Per model: forward+backward+Adam steps on a Criteo-like layout (26 categorical fields, 13 dense);
   achieved FLOP/s = 3 x analytic forward FLOPs per example x samples/s; MFU = achieved / peak.
3. Ray Train ratio: the same model and rows through `mixrec.pipelines.train.train` with one worker (Ray Data
   `iter_torch_batches` with prefetch feeding the loop) against a bare loop over in-memory tensors; each
   times its second epoch (start-up excluded). The bare loop runs before and after Ray Train and the ratio
   uses their mean. Goal >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mixrec.models import FeatureLayout, build_model

CRITEO_LIKE = FeatureLayout(cardinalities=(1000,) * 26, n_dense=13)


def matmul_peak(device: str, seconds: float = 1.5) -> float:
    n = 2048 if device == "cpu" else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def step_throughput(model, batch: int, steps: int, device: str) -> float:
    # fused: one kernel over all parameters (Adam's per-tensor loops dominate for 100M-parameter models)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    cat = torch.stack([torch.randint(0, c, (batch,)) for c in CRITEO_LIKE.cardinalities], 1).to(device)
    dense = torch.randn(batch, CRITEO_LIKE.n_dense, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    model.to(device).train()

    gpu = device == "cuda"  # the GPU peak is bf16, so the model runs under bf16 autocast there

    def one():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
            logits = model(cat, dense)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y) + model.auxiliary_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def clock() -> float:
        if gpu:
            torch.cuda.synchronize()  # CUDA work is asynchronous: time the work, not the launches
        return time.perf_counter()

    for _ in range(2):
        one()
    t0 = clock()
    for _ in range(steps):
        one()
    return batch * steps / (clock() - t0)


def ray_train_ratio(model_name: str, kwargs: dict, rows: int, batch: int, train_settings: dict) -> dict:
    """Bare loop vs Ray Train (1 worker) over the same preprocessed rows, same batch size, same threads."""
    import tempfile
    from pathlib import Path

    from mixrec.features.schema import SYNTHETIC_SCHEMA as schema
    from mixrec.features.synthetic import generate
    from mixrec.pipelines.config import TrainConfig
    from mixrec.pipelines.optim import build_optimizers
    from mixrec.pipelines.preprocess import fit_preprocessor
    from mixrec.pipelines.runtime import init_ray
    from mixrec.pipelines.train import train

    threads = torch.get_num_threads()
    # The one Train worker holds `threads` CPUs (the bare loop's threads) and Ray Data needs a CPU of its own to
    # feed it (the trainer refuses less): a logical CPU more than the threads, on the same cores.
    ray = init_ray(num_cpus=threads + 1)
    t = generate(num_events=rows, num_users=2000, num_items=1000, days=7, seed=1)
    frame = t.events.merge(t.users.drop_duplicates("user_id"), on="user_id", suffixes=("", "_u")).merge(
        t.items, on="item_id", suffixes=("", "_i"))[list(schema.required_columns)]
    ds = ray.data.from_pandas(frame)
    pre = fit_preprocessor(ds, schema, min_count=1, clip_sigma=5.0)
    prepared = ds.map_batches(pre.transform_batch, batch_format="pandas").materialize()
    valid = prepared.limit(2048).materialize()

    arrays = pre.transform_batch(frame)
    cat, dense, y = (torch.from_numpy(arrays[k]) for k in ("categorical", "dense", "label"))
    cfg = TrainConfig(num_workers=1, cpus_per_worker=float(threads), epochs=2, batch_size=batch, **train_settings)

    def bare_loop() -> float:
        """The same model, optimizer and batches as the Ray Train loop, from in-memory tensors."""
        torch.manual_seed(0)
        model = build_model(model_name, pre.layout(), **kwargs)
        optimizers = build_optimizers(model, cfg.model_dump()).values()
        model.train()
        for _ in range(2):  # the second epoch is measured, as for Ray Train (warm caches)
            t0 = time.perf_counter()
            for i in range(0, len(y), batch):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    model(cat[i:i + batch], dense[i:i + batch]), y[i:i + batch]) + model.auxiliary_loss(y[i:i + batch])
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm:  # as the Ray Train step does
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                for opt in optimizers:
                    opt.step()
            rate = len(y) / (time.perf_counter() - t0)
        return rate

    bare_before = bare_loop()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train(prepared, valid, pre, model_name, kwargs, cfg, Path(tmp), run_name="speed")
    ray_rate = outcome.last_metrics["train_samples_per_s"]
    bare_after = bare_loop()
    bare = (bare_before + bare_after) / 2
    return {"model": model_name, "rows": rows, "batch": batch, "threads": threads,
            "bare_samples_per_s_before": bare_before, "bare_samples_per_s_after": bare_after,
            "ray_train_samples_per_s": ray_rate, "ratio": ray_rate / bare}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rankmixer,rankmixer_moe,tokenmixer_large,unimixer,unimixer_lite,wukong,dnn,dcnv2")
    ap.add_argument("--size", default="large", help="named size suffix where one exists (small/base/large)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ratio-model", default="rankmixer")
    ap.add_argument("--ratio-rows", type=int, default=100_000)
    ap.add_argument("--skip-ratio", action="store_true", help="MFU table only")
    ap.add_argument("--train", default="{}", help="JSON of train settings for the ratio's Ray Train run, e.g. "
                    "'{\"shuffle_buffer_batches\": 0}'")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} timed steps")
    rows = []
    print("| model | size | parameters | MFLOPs/example | samples/s | achieved GFLOP/s | peak GFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        label = f"{name}_{args.size}"
        try:
            model = build_model(label, CRITEO_LIKE)
        except ValueError:  # no such named size: the architecture's default size
            label = name
            model = build_model(name, CRITEO_LIKE)
        peak_before = matmul_peak(device)
        rate = step_throughput(model, args.batch, args.steps, device)
        peak = (peak_before + matmul_peak(device)) / 2
        achieved = 3 * model.flops_per_example() * rate
        row = {"model": name, "size": label, "parameters": model.num_parameters(),
               "mflops_per_example": model.flops_per_example() / 1e6, "samples_per_s": rate,
               "achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "mfu": achieved / peak}
        rows.append(row)
        print(f"| {name} | {label} | {row['parameters']:,} | {row['mflops_per_example']:.2f} | {rate:,.0f} | "
              f"{row['achieved_gflops']:.1f} | {row['peak_gflops']:.1f} | {row['mfu']:.1%} |", flush=True)
        del model
    ratio = None
    if not args.skip_ratio:
        ratio = ray_train_ratio(args.ratio_model, {}, args.ratio_rows, 1024, json.loads(args.train))
        print(f"Ray Train (1 worker) vs bare PyTorch loop, {args.ratio_model}, {ratio['rows']:,} rows, batch "
              f"{ratio['batch']}: {ratio['ray_train_samples_per_s']:,.0f} vs {ratio['bare_samples_per_s_before']:,.0f} "
              f"(before) / {ratio['bare_samples_per_s_after']:,.0f} (after) samples/s, ratio {ratio['ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": rows, "ray_train_ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
