"""A Frappe search for the token mixers on one GPU, in two phases, within a time budget — not a test.

1. **Screen** (seed 2021): UniMixer and TokenMixer-Large on the authors' recipe (presets ``unimixer_authors``,
   ``tokenmixer_large_authors``) across a grid of d_model, embedding L2, decoupled weight decay and the
   embedding set-up (the field LayerNorm, or the plain init: no LayerNorm, zero biases, N(0, 0.01²) table),
   with DCNv2 and DNN at their BARS presets beside them.
2. **Seeds** (2022–2024, new seeds, so the screen's selection does not flatter the figures): per model, the
   configs with the best screen *validation* AUC, the same config with the embedding set-up flipped (the
   field-LayerNorm ablation), and DCNv2 and DNN, all in the same run.

Each run is one ``bench/frappe_quality.py`` process (its loop and protocol, ``--device``); ``--workers`` of them
share the GPU. Jobs are shuffled, so a deadline leaves a balanced subset. Usage (from the repo root)::

    python bench/frappe_sweep.py --device cuda --workers 14 --out /tmp/sweep
    python bench/frappe_quality.py --table-only --results /tmp/sweep/seeds.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PLAIN = {"embedding_norm": False, "zero_bias_init": True, "embedding_init_std": 0.01}
SEEDS = (2022, 2023, 2024)


def screen_grid() -> list[dict]:
    jobs = []
    widths = {"unimixer_authors": (64, 128), "tokenmixer_large_authors": (32, 64, 128)}
    for model, d_models in widths.items():
        for d_model, emb_reg, wd, plain in itertools.product(d_models, (0.01, 0.015, 0.03), (5e-5, 0.05),
                                                             (False, True)):
            jobs.append(dict(model=model, d_model=d_model, emb_reg=emb_reg, weight_decay=wd, plain=plain))
    return jobs


def variant(job: dict) -> str:
    if "d_model" not in job:
        return "bars"
    return (f"d{job['d_model']}-l2{job['emb_reg']}-wd{job['weight_decay']}-{'plain' if job['plain'] else 'ln'}")


def command(job: dict, seed: int, args, results: Path) -> list[str]:
    cmd = [sys.executable, str(BENCH / "frappe_quality.py"), "--models", job["model"], "--seed", str(seed),
           "--device", args.device, "--max-epochs", str(args.max_epochs), "--patience", "2",
           "--variant", variant(job), "--results", str(results)]
    if args.data:
        cmd += ["--data", args.data]
    if "d_model" in job:
        override = {"d_model": job["d_model"], **(PLAIN if job["plain"] else {})}
        cmd += ["--emb-reg", str(job["emb_reg"]), "--weight-decay", str(job["weight_decay"]),
                "--override", json.dumps(override)]
    return cmd


def run_phase(name: str, runs: list[tuple[dict, int]], args, deadline: float) -> list[dict]:
    """Run every (job, seed) with ``args.workers`` processes; none starts after ``deadline``, and any still
    running at ``deadline + args.grace`` is stopped. Returns the result rows of the runs that finished."""
    work = Path(args.out) / f"{name}-runs"
    work.mkdir(parents=True, exist_ok=True)

    def one(i: int, job: dict, seed: int) -> None:
        if time.monotonic() > deadline:
            return
        log = (work / f"{i}.log").open("w")
        proc = subprocess.Popen(command(job, seed, args, work / f"{i}.jsonl"), stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(1.0, deadline + args.grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"[{name}] stopped at the deadline: {job['model']} {variant(job)} seed {seed}", flush=True)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda a: one(*a), [(i, job, seed) for i, (job, seed) in enumerate(runs)]))
    rows = [json.loads(line) for f in sorted(work.glob("*.jsonl")) for line in f.read_text().splitlines() if line]
    (Path(args.out) / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"[{name}] {len(rows)} of {len(runs)} runs finished", flush=True)
    return rows


def pick(rows: list[dict], grid: list[dict], top: int) -> list[dict]:
    """Per token mixer, the ``top`` configs by screen validation AUC, then each one's embedding set-up flipped."""
    by_name = {(job["model"], variant(job)): job for job in grid}
    jobs = []
    for model in ("unimixer_authors", "tokenmixer_large_authors"):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: -r["valid_auc"])[:top]
        for r in mine:
            job = by_name[(model, r["variant"])]
            flipped = {**job, "plain": not job["plain"]}
            jobs += [j for j in (job, flipped) if j not in jobs]
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--data", default=None, help="Frappe folder (frappe_quality.py's default when absent)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--top", type=int, default=1, help="configs per model carried to the seed phase")
    p.add_argument("--screen-seconds", type=float, default=230, help="no screen run starts after this")
    p.add_argument("--total-seconds", type=float, default=470, help="no seed run starts after this")
    p.add_argument("--grace", type=float, default=60, help="seconds a run may go on past its phase's deadline")
    p.add_argument("--limit", type=int, default=None, help="screen only the first N shuffled jobs (smoke runs)")
    args = p.parse_args()
    start = time.monotonic()
    baselines = [dict(model="dcnv2"), dict(model="dnn")]
    grid = screen_grid()
    random.Random(0).shuffle(grid)
    screen = [(job, 2021) for job in baselines + grid[:args.limit]]
    rows = run_phase("screen", screen, args, start + args.screen_seconds)
    chosen = pick(rows, grid, args.top)
    print("[seeds] configs: " + ", ".join(f"{j['model']} {variant(j)}" for j in chosen), flush=True)
    seeds = [(job, s) for s in SEEDS for job in baselines + chosen]
    run_phase("seeds", seeds, args, start + args.total_seconds)


if __name__ == "__main__":
    main()
