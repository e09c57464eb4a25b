"""Ray Data Parquet read overhead: DataSourceV2 (Ray 2.60's default) against the V1 reader, same process.

Each execution reads one small Parquet file (the size of the test suite's tiny pipelines) and is timed end to
end; the first of each kind is a warm-up. Why mixrec turns V2 off (pipelines/runtime.py, WORKER_ENV): every
validation pass, preprocessing pass and training epoch is one such read.

    .venv/bin/python bench/ray_data_read.py --rows 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from mixrec.pipelines.runtime import init_ray

    ray = init_ray(num_cpus=2)
    ctx = ray.data.DataContext.get_current()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "rows.parquet")
        rng = np.random.default_rng(0)
        pq.write_table(pa.table({"id": np.arange(args.rows), "x": rng.random(args.rows)}), path)
        seconds = {}
        for name, v2 in (("v1", False), ("v2", True)):
            ctx.use_datasource_v2 = v2
            runs = []
            for _ in range(args.repeats + 1):
                t0 = time.perf_counter()
                rows = len(ray.data.read_parquet(path).take_all())
                runs.append(time.perf_counter() - t0)
                assert rows == args.rows, rows
            seconds[name] = statistics.median(runs[1:])
            print(f"{name}: median {seconds[name]:.3f} s per read of {args.rows:,} rows "
                  f"({args.repeats} reads after a warm-up)")
        print(f"v2 / v1: {seconds['v2'] / seconds['v1']:.1f}x")


if __name__ == "__main__":
    main()
