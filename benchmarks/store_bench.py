"""Activation-store throughput against what SAE training consumes, measured in one run.

    python benchmarks/store_bench.py [--rows 300000] [--d 576] [--dtype float32,bfloat16,float16]

Prints, per store dtype (measured in turn in this one run), the bytes on disk, write rows/s and
shuffled-read rows/s (batch 4096, normalised, prefetching), and the ratio of the read rate to an
SA-GSAE training step's tokens/s (d=576, width 4608, batch 4096, fp32).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _timing import sae_step_fn

from sagsae_cli.reader import ShuffledBatches
from sagsae_cli.store import StoreWriter, open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--dtype", default="float32,bfloat16,float16", help="comma-separated store dtypes")
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    data = torch.randn(16384, a.d)
    rows = {}
    for dtype in a.dtype.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            with StoreWriter(f"{tmp}/s", d=a.d, dtype=dtype, config={"bench": 1}) as w:
                for start in range(0, a.rows, 16384):
                    w.append("train", data[: min(16384, a.rows - start)])
                    w.commit()
            write = a.rows / (time.perf_counter() - t)
            store = open_store(f"{tmp}/s")
            reader = ShuffledBatches(store, a.batch, seed=0)
            t = time.perf_counter()
            n = sum(x.shape[0] for x in reader.epoch(0))
            rows[dtype] = (store.disk_bytes(), write, n / (time.perf_counter() - t))

    step = sae_step_fn("sa-gsae", a.d, a.width, a.batch)
    step()
    t = time.perf_counter()
    for _ in range(3):
        step()
    train = 3 * a.batch / (time.perf_counter() - t)
    print(f"rows={a.rows:,} d={a.d}, {torch.get_num_threads()} threads")
    print(f"SA-GSAE training {train:12,.0f} tokens/s (width {a.width}, batch {a.batch})")
    print(f"{'dtype':10} {'MiB':>8} {'write rows/s':>14} {'read rows/s':>14} {'read/train':>11}")
    for dtype, (size, write, read) in rows.items():
        print(
            f"{dtype:10} {size / 2**20:8,.0f} {write:14,.0f} {read:14,.0f} {read / train:10.1f}x  (must be >= 10)"
        )


if __name__ == "__main__":
    main()
