"""Ingest benchmark: rows/s and peak memory of Feast retrieval -> Ray Data -> GX -> preprocessing.

For each size it writes synthetic files (events Parquet + daily user snapshots + items, the docs/datasets.md
"shop" layout) chunk by chunk, then runs the pipeline's data steps (``prepare_data``) from a schema file in
a child process while sampling the memory of that process and all its descendants (Ray's raylet, workers
and the object store they map). Baseline, same rows in the same run: a raw pyarrow read of the events file
plus a numpy transform (vocabulary lookup of the categoricals, per-row user/item feature gather, log1p and
standardize), no Feast, no validation.

    .venv/bin/python bench/ingest.py --rows 1000000 5000000 --out /tmp/mixrec-ingest [--offline-store duckdb]

Prints one line per size and a JSON summary; figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_YAML = """\
name: bench_shop
format: parquet
files: {all: events.parquet}
label: clicked
event_key: event_id
timestamp: event_time
entities:
  user: {key: user_id, file: users.parquet, timestamp: snapshot_time}
  item: {key: item_id, file: items.parquet, timestamp: snapshot_time}
categorical:
  - user_id
  - item_id
  - device
  - hour
  - {name: region, source: user}
  - {name: category, source: item}
dense:
  - {name: activity, source: user}
  - {name: price, source: item, log1p: true}
split: {policy: time, valid_fraction: 0.1, test_fraction: 0.1}
"""
CHUNK = 1_000_000
STEP_LINE = re.compile(r"^\[\d+\] (.*)")  # the pipeline's progress line that starts a step
OBJECT_STORE_BYTES = 1 << 30
USERS, ITEMS, DAYS = 20_000, 5_000, 14


def write_files(rows: int, folder: Path) -> None:
    """Synthetic events in chunks of 1M (bounded memory), users' daily snapshots and the items."""
    from mixrec.features.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    writer = None
    for k, start in enumerate(range(0, rows, CHUNK)):
        t = generate(min(CHUNK, rows - start), USERS, ITEMS, DAYS, seed=100 + k)
        events = t.events.rename(columns={"event_timestamp": "event_time", "label": "clicked"})
        events["event_id"] += start
        table = pa.Table.from_pandas(events, preserve_index=False)
        writer = writer or pq.ParquetWriter(folder / "events.parquet", table.schema)
        writer.write_table(table)
        if k == 0:
            t.users.rename(columns={"event_timestamp": "snapshot_time"})[
                ["user_id", "snapshot_time", "region", "activity"]].to_parquet(folder / "users.parquet")
            t.items.rename(columns={"event_timestamp": "snapshot_time"})[
                ["item_id", "snapshot_time", "category", "price"]].to_parquet(folder / "items.parquet")
    writer.close()
    (folder / "schema.yaml").write_text(SCHEMA_YAML)


def baseline(folder: Path) -> float:
    """rows/s of a raw pyarrow read + numpy transform of the same events (latest user snapshot, no PIT)."""
    t0 = time.perf_counter()
    events = pq.read_table(folder / "events.parquet", columns=["user_id", "item_id", "device", "hour", "clicked"])
    users = pq.read_table(folder / "users.parquet").to_pandas().drop_duplicates("user_id", keep="last")
    items = pq.read_table(folder / "items.parquet").to_pandas()
    u, i = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    cats = [u, i, events["device"].to_numpy(), events["hour"].to_numpy(),
            users["region"].to_numpy()[np.searchsorted(users["user_id"].to_numpy(), u)],
            items["category"].to_numpy()[np.searchsorted(items["item_id"].to_numpy(), i)]]
    encoded = np.stack([np.unique(c, return_inverse=True)[1] + 1 for c in cats], axis=1)
    activity = users["activity"].to_numpy()[np.searchsorted(users["user_id"].to_numpy(), u)].astype(np.float64)
    price = np.log1p(items["price"].to_numpy()[np.searchsorted(items["item_id"].to_numpy(), i)].astype(np.float64))
    dense = np.stack([(x - x.mean()) / x.std() for x in (activity, price)], axis=1).astype(np.float32)
    assert encoded.shape[0] == dense.shape[0] == events.num_rows
    return events.num_rows / (time.perf_counter() - t0)


def offline_store_block(kind: str, workspace: Path) -> dict:
    """The ``features.offline_store`` block of ``--offline-store``: Feast's file (pandas/dask), DuckDB (ibis) or
    contrib Ray store."""
    return {"ray": {"type": "ray", "storage_path": str(workspace / "ray_offline_store")}}.get(kind, {"type": kind})


def run_pipeline_child(folder: Path, workspace: Path, offline_store: str = "file") -> None:
    """Child process: the pipeline's data steps on the files; prints the step seconds as JSON."""
    from mixrec.pipelines.config import parse_config
    from mixrec.pipelines.prepare import prepare_data
    from mixrec.pipelines.progress import StepTimer
    from mixrec.pipelines.runtime import init_ray
    from mixrec.pipelines.workspace import Workspace

    # A capped object store: Ray spills blocks to disk beyond it.
    init_ray(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES)
    cfg = parse_config({"workspace": str(workspace), "data": {"schema": str(folder / "schema.yaml"), "root": str(folder)},
                        "features": {"retrieval_chunk_rows": 500_000,
                                     "offline_store": offline_store_block(offline_store, workspace)}, "preprocess": {"min_count": 2}})
    ws = Workspace.resolve(cfg.workspace).create(fresh=True)
    timer = StepTimer(lambda line: print(line, file=sys.stderr, flush=True))
    data = prepare_data(cfg, ws, timer)
    print(json.dumps({"seconds": timer.seconds, "counts": data.counts}))


def _tree_memory(pid: int) -> tuple[int, int, int, list[tuple[str, float]]]:
    """(sum of RSS, sum of PSS, PSS of the root process, [(process, PSS GiB, USS GiB)] largest first) over a process
    and its descendants. PSS splits shared pages (the object store) between the processes mapping them, so
    its sum does not count them twice."""
    import psutil

    rss = pss = root_pss = 0
    each = []
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
                root_pss = info.pss if p.pid == pid else root_pss
                name = "driver" if p.pid == pid else (p.cmdline()[0] if p.cmdline() else p.name())
                each.append((name.split("/")[-1][:48], round(info.pss / 2**30, 2), round(info.uss / 2**30, 2)))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except psutil.NoSuchProcess:
        pass
    return rss, pss, root_pss, sorted(each, key=lambda x: -x[1])


def measure(folder: Path, workspace: Path, offline_store: str = "file") -> dict:
    """Run the child; sample the process tree's memory once a second, attributing each peak to the pipeline
    step running at the time (the child's "[n] ..." progress lines on stderr mark the steps)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", str(folder), str(workspace),
                              "--offline-store", offline_store],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = {"rss": 0, "pss": 0, "driver_pss": 0}
    step_peak: dict[str, float] = {}
    at_peak: list = []
    current = ["start"]
    done = threading.Event()

    def follow_steps():
        for line in child.stderr:
            sys.stderr.write(line)
            step = STEP_LINE.match(line)
            if step:  # the figures so far, so a long run that dies later still leaves them in its log
                print(f"bench: peak PSS so far {peak['pss'] / 2**30:.2f} GiB (driver {peak['driver_pss'] / 2**30:.2f}); "
                      f"by step {step_peak}; largest at peak {at_peak[:4]}", file=sys.stderr, flush=True)
                current[0] = step.group(1).split(":")[0].strip(" .")[:40]

    def sample():
        while not done.is_set():
            rss, pss, driver, each = _tree_memory(child.pid)
            if pss > peak["pss"]:
                at_peak[:] = each[:8]
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            peak["driver_pss"] = max(peak["driver_pss"], driver)
            step_peak[current[0]] = max(step_peak.get(current[0], 0.0), round(pss / 2**30, 2))
            done.wait(1.0)

    threads = [threading.Thread(target=f, daemon=True) for f in (follow_steps, sample)]
    for t in threads:
        t.start()
    out = child.stdout.read()
    child.wait()
    done.set()
    print(f"bench: peak PSS {peak['pss'] / 2**30:.2f} GiB (driver {peak['driver_pss'] / 2**30:.2f}); by step "
          f"{step_peak}; largest at peak {at_peak[:4]}", file=sys.stderr, flush=True)
    for t in threads:
        t.join()
    if child.returncode:
        raise SystemExit(f"pipeline child failed with exit code {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_tree_pss_gib"] = round(peak["pss"] / 2**30, 2)
    result["peak_tree_rss_gib"] = round(peak["rss"] / 2**30, 2)
    result["peak_driver_pss_gib"] = round(peak["driver_pss"] / 2**30, 2)
    result["peak_pss_gib_by_step"] = step_peak
    result["largest_processes_at_peak"] = at_peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mixrec-ingest"))
    parser.add_argument("--offline-store", choices=("file", "duckdb", "ray"), default="file",
                        help="Feast offline store of the point-in-time join (features.offline_store.type)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_pipeline_child(Path(args.child[0]), Path(args.child[1]), args.offline_store)
        return
    summary = []
    for rows in args.rows:
        folder = args.out / f"data-{rows}"
        if not (folder / "schema.yaml").exists():
            write_files(rows, folder)
        base = baseline(folder)
        r = measure(folder, args.out / f"ws-{rows}", args.offline_store)
        steps = ("ingest", "feast", "validate", "preprocess", "dataset_checks")
        seconds = sum(r["seconds"].get(s, 0.0) for s in steps)
        r.update(rows=rows, offline_store=args.offline_store, pipeline_rows_per_s=round(rows / seconds), baseline_rows_per_s=round(base),
                 ratio=round(base / (rows / seconds), 1))
        summary.append(r)
        print(f"{rows:>11,} rows, {args.offline_store} offline store: pipeline {r['pipeline_rows_per_s']:>9,} rows/s ({seconds:.0f} s: "
              + ", ".join(f"{s} {r['seconds'].get(s, 0):.0f}" for s in steps)
              + f"), baseline {r['baseline_rows_per_s']:>11,} rows/s, baseline/pipeline {r['ratio']}x, "
              f"peak memory of the process tree: PSS {r['peak_tree_pss_gib']} GiB (RSS sum {r['peak_tree_rss_gib']} GiB, "
              f"driver PSS {r['peak_driver_pss_gib']} GiB); peak PSS by step {r['peak_pss_gib_by_step']}",
              flush=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
