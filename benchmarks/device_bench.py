"""Training throughput against the hardware, on whatever device there is (written for a GPU; runs on a
CPU at small sizes as a check). Every figure is measured in this one run and printed as a ratio:

1. the device's GEMM rate at the step's shapes (x W_enc, (batch, d) x (d, width)), in TFLOP/s;
2. the bare SA-GSAE training step (forward, backward, Adam, decoder constraint) under the trainer's
   autocast, as TFLOP/s of its 7 GEMMs and as a share of (1) (the goal on CUDA: >= 40% in bf16), with
   the gate code eager and compiled (``gating.compiled``; its losses checked against eager's);
3. the trainer's own step (`run.Run.train_step`: the same step plus the per-step bookkeeping:
   loss and L0 read back, non-finite check, dead-latent counters and resets) against (2): how much
   the host costs per step (the H200 finding: ~6.5 ms per run-step at batch 1,024);
4. the shuffled reader from a local store written here (pinned, prefetching), rows/s against the
   trainer step's tokens/s (must be >= 1 for the reader to keep up);
5. the trainer's step fed by its real input path (a bfloat16 store of more rows than one reader buffer;
   on CUDA the rows travel in bf16 through `reader.DeviceFeed`'s page-locked ring, the next batch's copy
   overlapping the step) against (3) on a resident batch (the goal on CUDA: within 10%).

    python benchmarks/device_bench.py                      # CUDA: d 2048, width 16384, batch 8192, bf16
    python benchmarks/device_bench.py --device cpu --d 64 --width 512 --batch 1024 --dtype fp32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _timing import best_times

from sagsae_cli.allocator import reuse_large_blocks
from sagsae_cli.distributed import World, pick_device
from sagsae_cli.probes import bare_step
from sagsae_cli.reader import DeviceFeed, ShuffledBatches
from sagsae_cli.recipe import TrainConfig
from sagsae_cli.run import Run, make_optimizer
from sagsae_cli.sae import SAEConfig, build_sae, gating
from sagsae_cli.store import StoreWriter, open_store


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns, device, repeats: int, inner: int) -> list[float]:
    """Best seconds per call of each callable (``inner`` calls per timing, device synchronised)."""

    def loop(fn):
        def run():
            for _ in range(inner):
                fn()
            sync(device)

        return run

    return [t / inner for t in best_times([loop(f) for f in fns], repeats)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--dtype", default="bf16", help="bf16 (autocast, fp32 master weights) or fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inner", type=int, default=5, help="steps per timing")
    ap.add_argument("--rows", type=int, default=200_000, help="rows in the reader's store")
    a = ap.parse_args()
    reuse_large_blocks()  # as `sagsae` does
    dev = pick_device(a.device)
    d, n, b = a.d, a.width, a.batch
    cast = torch.autocast(dev.type, dtype=torch.bfloat16) if a.dtype == "bf16" else nullcontext()
    gemm_dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    name = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{name}: d={d} width={n} batch={b} {a.dtype}, best of {a.repeats} x {a.inner} steps")

    # 1. GEMM rate at the step's shape
    x16 = torch.randn(b, d, device=dev, dtype=gemm_dtype)
    w16 = torch.randn(d, n, device=dev, dtype=gemm_dtype)
    (t_gemm,) = timed([lambda: x16 @ w16], dev, a.repeats, a.inner)
    gemm_rate = 2 * b * d * n / t_gemm

    # 2. the bare step and 3. the trainer's step, side by side
    sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=d, d_sae=n, l1=0.2)).to(dev)
    opt = make_optimizer(sae, 2e-3, 1.0)
    x = torch.randn(b, d, device=dev)

    bare = bare_step(sae, opt, x, cast, coef=0.2)

    def compiled():
        with gating.compiled():
            return bare()

    def loss_now(compile_gate: bool) -> torch.Tensor:
        with torch.no_grad(), cast, gating.compiled(compile_gate):
            return sum(v.float() for v in sae(x, coef=0.2).losses.values())

    # the compiled gate code against the eager one, on the same weights
    eager_loss, compiled_loss = loss_now(False), loss_now(True)
    print(f"compiled gate code: loss {float(compiled_loss):.6g} against eager {float(eager_loss):.6g}")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(variant="sa-gsae", width=n, l1=0.2, tokens=10**12, batch=b, lr=2e-3, snapshots=0,
                          store=f"{tmp}/none")  # fmt: skip
        run = Run(cfg, d, Path(tmp), x[:1024].cpu(), World(device=dev), force=True)
        t_bare, t_comp, t_run = timed(
            [bare, compiled, lambda: run.train_step(x, cast)], dev, a.repeats, a.inner
        )
        step_flops = 7 * 2 * b * d * n

        # 4. the reader from a local store
        rows = torch.randn(min(a.rows, 16384), d)
        with StoreWriter(f"{tmp}/store", d=d, dtype="float32", config={"bench": 1}) as w:
            for start in range(0, a.rows, rows.shape[0]):
                w.append("train", rows[: min(rows.shape[0], a.rows - start)])
                w.commit()
        reader = ShuffledBatches(open_store(f"{tmp}/store"), b, seed=0)
        t = time.perf_counter()
        got = 0
        for batch in reader.epoch(0):
            batch = batch.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else batch
            got += batch.shape[0]
        sync(dev)
        read_rate = got / (time.perf_counter() - t)

        # 5. the trainer fed by its real input path, against the step on a resident batch
        with StoreWriter(f"{tmp}/store16", d=d, dtype="bfloat16", config={"bench": 2}) as w:
            for _ in range(8):
                w.append("train", torch.randn(b, d))
                w.commit()
        on_device = dev.type == "cuda"
        reader16 = ShuffledBatches(
            open_store(f"{tmp}/store16"), b, seed=0, buffer_rows=2 * b, widen=not on_device
        )
        feed = DeviceFeed(dev, reader16.scale) if on_device else None

        def fed():
            batches = reader16.epoch(0)
            for xb in feed(batches) if feed else batches:
                run.train_step(xb.to(dev, non_blocking=True), cast)

        resident = lambda: [run.train_step(x, cast) for _ in range(8)]
        t_res8, t_fed8 = timed([resident, fed], dev, a.repeats, 1)

    print(f"GEMM (b x d) @ (d x width)      {gemm_rate / 1e12:8.2f} TFLOP/s")
    print(f"bare SA-GSAE step    {t_bare * 1e3:9.2f} ms  {step_flops / t_bare / 1e12:8.2f} TFLOP/s  "
          f"{step_flops / t_bare / gemm_rate:6.1%} of the GEMM rate  {b / t_bare:12,.0f} tok/s")  # fmt: skip
    print(f"  gate code compiled {t_comp * 1e3:9.2f} ms  {step_flops / t_comp / 1e12:8.2f} TFLOP/s  "
          f"{step_flops / t_comp / gemm_rate:6.1%} of the GEMM rate  {b / t_comp:12,.0f} tok/s")  # fmt: skip
    print(f"trainer step (Run)   {t_run * 1e3:9.2f} ms  {step_flops / t_run / 1e12:8.2f} TFLOP/s  "
          f"{step_flops / t_run / gemm_rate:6.1%} of the GEMM rate  {b / t_run:12,.0f} tok/s")  # fmt: skip
    print(
        f"trainer / bare step: {t_run / t_bare:.2f}x  (host bookkeeping per step: {(t_run - t_bare) * 1e3:+.2f} ms)"
    )
    print(
        f"reader               {read_rate:12,.0f} rows/s = {read_rate / (b / t_run):.1f}x the trainer's tokens/s"
    )
    print(
        f"trainer fed by its input path (bf16 store, 8 batches over 4 reader buffers): {t_fed8 / 8 * 1e3:.2f} ms "
        f"per step against {t_res8 / 8 * 1e3:.2f} ms on a resident batch: {t_res8 / t_fed8:.2f}x the resident rate"
    )


if __name__ == "__main__":
    main()
