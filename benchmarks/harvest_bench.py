"""Harvest throughput on SmolLM2-135M against a plain full forward pass, measured in one run.

    python benchmarks/harvest_bench.py [--layer 15] [--windows 64] [--context 128] [--batch-size 16]

Prints tokens/s of (1) the full forward (all 30 layers + LM head), (2) the forward stopped after
layer L, (3) `sagsae harvest` itself (hooks, norm filter, store writes, commits) on the same windows,
and the ratios harvest / full (aim >= 1.6 at layer 15) and harvest overhead over (2) (aim <= 10%).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch
from _timing import best_times

import sagsae_cli.harvest as harvest_module
from sagsae_cli.data import iter_windows
from sagsae_cli.harvest import HarvestConfig, harvest
from sagsae_cli.hooks import run_to_layer
from sagsae_cli.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    t = time.perf_counter()
    loaded = load_model("smollm2-135m")
    t_load = time.perf_counter() - t
    model, tok, _ = loaded
    harvest_module.load_model = lambda *args, **kw: loaded  # a fixed cost, reported apart
    windows = [
        w for _, w in zip(range(a.windows), (w for s, w in iter_windows("shakespeare", tok, a.context, 0)))
    ]
    batches = [torch.tensor(windows[i : i + a.batch_size]) for i in range(0, len(windows), a.batch_size)]
    n_tok = a.windows * a.context

    def full():
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)

    def truncated():
        with torch.no_grad():
            for ids in batches:
                run_to_layer(model, ids, ["resid_mid"], a.layer)

    cfg = HarvestConfig(model="smollm2-135m", hooks=("resid_mid",), layer=a.layer, context=a.context,
                        tokens=a.windows * (a.context - 1), eval_tokens=0, batch_size=a.batch_size)  # fmt: skip
    tmp, calls = tempfile.TemporaryDirectory(), itertools.count()

    def harvested():  # a new store each call; deleting them is left out of the timing
        harvest(cfg, f"{tmp.name}/s{next(calls)}", quiet=True)

    r_full, r_trunc, r_harv = (n_tok / t for t in best_times([full, truncated, harvested], a.repeats))
    tmp.cleanup()
    print(f"SmolLM2-135M fp32, {torch.get_num_threads()} threads, {a.windows} windows x {a.context} tokens, "
          f"batch {a.batch_size}, layer {a.layer}")  # fmt: skip
    print(f"full forward        {r_full:10,.0f} tok/s")
    print(f"stopped after L{a.layer:<3d}  {r_trunc:10,.0f} tok/s  ({r_trunc / r_full:.2f}x full)")
    print(
        f"sagsae harvest      {r_harv:10,.0f} tok/s  ({r_harv / r_full:.2f}x full; "
        f"overhead over the truncated forward {r_trunc / r_harv - 1:+.1%}; model load {t_load:.1f}s excluded)"
    )


if __name__ == "__main__":
    main()
