"""The GPU-only measurements of `benchmarks/gpu_smoke.sh` (run it through that script):

1. host syncs per training step, per variant and mode, counted by CUDA's own sync debug mode
   (``torch.cuda.set_sync_debug_mode("warn")``: every synchronising call warns) over steps that are not
   log steps, and by ``probes.SyncProbe`` beside it;
2. peak memory of one bare training step at d 2048 x widths 16,384 and 32,768, batch 8,192, bf16
   autocast: the CUDA allocator's peak above what was held before the step, per batch x width element
   (the goal: <= 24 bytes), and ``probes.LiveBytes``'s count of the same step.

    python benchmarks/gpu_smoke.py            # CUDA only
    python benchmarks/gpu_smoke.py --dry-cpu  # the same code at toy sizes on CPU (checks the script)
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from sagsae_cli.distributed import World
from sagsae_cli.probes import SyncProbe, step_peak_bytes
from sagsae_cli.recipe import TrainConfig
from sagsae_cli.run import Run

MODES = [("sa-gsae", {}), ("sa-gsae", {"reset_mode": "residual"}), ("sa-gsae", {"reset_mode": "quantile"}),
         ("sa-gsae", {"target_l0": 32.0}), ("sa-gsae-untied", {}), ("gated", {}), ("relu", {}),
         ("topk", {"k": 32}), ("jumprelu", {})]  # fmt: skip


def syncs_per_step(dev: torch.device, d: int, width: int, batch: int, steps: int) -> None:
    print(
        f"1. host syncs per training step (d {d}, width {width}, batch {batch}, bf16 autocast, {steps} steps)"
    )
    cast = torch.autocast(dev.type, dtype=torch.bfloat16)
    x = [torch.randn(batch, d, device=dev) for _ in range(steps + 1)]
    for variant, extra in MODES:
        with tempfile.TemporaryDirectory() as tmp:
            # a dead window of one batch: resets happen inside the counted steps
            cfg = TrainConfig(variant=variant, width=width, tokens=10**9, batch=batch, lr=1e-3, snapshots=0,
                              dead_window=batch, warmup_steps=1, l1_warmup_frac=0.0, store=f"{tmp}/none",
                              **extra)  # fmt: skip
            run = Run(cfg, d, Path(tmp), x[0].cpu(), World(device=dev), force=True)
            run.train_step(x[0], cast)  # the optimiser's state is made here
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.set_sync_debug_mode("warn")
            probe = SyncProbe()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with probe:
                    for xb in x[1:]:
                        run.train_step(xb, cast)
            if dev.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            cuda_syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
            label = variant + "".join(f" {k}={v}" for k, v in extra.items())
            print(f"   {label:36s} CUDA sync warnings/step {len(cuda_syncs) / steps:5.2f}   "
                  f"probe/step {len(probe.seen) / steps:5.2f}" + (f"  ({sorted(set(probe.seen))})" if probe.seen else ""))  # fmt: skip
            for w in cuda_syncs[:2]:
                print(f"      {w.filename}:{w.lineno}: {str(w.message)[:120]}")


def peak_memory(dev: torch.device, d: int, widths: list[int], batch: int) -> None:
    print(
        f"2. peak memory of one bare step, d {d}, batch {batch}, bf16 autocast (goal <= 24 B per batch x width element)"
    )
    for width in widths:
        for variant in ("sa-gsae", "gated"):
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            counted = step_peak_bytes(variant, d, width, batch, "bf16", device=dev)
            line = f"   {variant:8s} width {width:6,d}: LiveBytes {counted:5.1f} B/element"
            if dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(dev)
                line += f"; allocator peak {peak / 2**30:6.2f} GiB in all (weights, Adam, two steps)"
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-cpu", action="store_true", help="toy sizes on CPU, to check the script itself")
    a = ap.parse_args()
    if a.dry_cpu:
        dev = torch.device("cpu")
        syncs_per_step(dev, d=32, width=256, batch=256, steps=3)
        peak_memory(dev, d=32, widths=[512], batch=256)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_smoke.py needs a CUDA device (--dry-cpu checks the script on CPU)")
    dev = torch.device("cuda", torch.cuda.current_device())
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    syncs_per_step(dev, d=2048, width=16384, batch=8192, steps=5)
    peak_memory(dev, d=2048, widths=[16384, 32768], batch=8192)


if __name__ == "__main__":
    main()
