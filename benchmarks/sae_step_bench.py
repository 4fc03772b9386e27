"""One training step (forward, backward, Adam, decoder constraint) of every architecture, against
the bare matmul floor (the same GEMMs timed alone), each step timed in turns with its floor.
``--optimizers`` also times each step with PyTorch's per-tensor Adam loop instead of the trainer's
fused Adam, in the same turns; ``--whole-arrays`` each Gated-family step with the gate code over whole
arrays instead of row blocks (``gating.BLOCK``; blocks apply with one thread only).

The process reuses freed large blocks (``sagsae_cli.allocator``, as `sagsae` does); unless
``--no-system`` it then runs itself again with glibc's default allocator (``SAGSAE_MALLOC=system``)
for the comparison. ``--compile`` adds the Gated family's steps with the gate code compiled.

    python benchmarks/sae_step_bench.py [--d 576] [--width 4608] [--batch 4096] [--repeats 3] [--optimizers]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
from _timing import best_times, optimizer, sae_step_fn

from sagsae_cli.allocator import reuse_large_blocks
from sagsae_cli.errors import SagsaeError
from sagsae_cli.sae import VARIANTS, SAEConfig, architecture, build_sae, gating, resolve, settings_of

LOOP = " (loop Adam)"


def gemm_floor(d: int, n: int, b: int, aux: bool):
    """encode (x W_enc), its weight gradient, decode (f W_dec), its two gradients; plus the aux
    decode and its input gradient for gated architectures."""
    x, g_u = torch.randn(b, d), torch.randn(b, n)
    w_enc, w_dec, f, g_x = torch.randn(d, n), torch.randn(n, d), torch.randn(b, n), torch.randn(b, d)

    def run():
        x @ w_enc
        x.T @ g_u
        f @ w_dec
        g_x @ w_dec.T
        f.T @ g_x
        if aux:
            f @ w_dec
            g_x @ w_dec.T

    return run


def compiled(step):
    def run():
        with gating.compiled():
            step()

    return run


def whole_arrays(step):
    """The step with the gate code over whole (tokens x latents) arrays instead of row blocks."""

    def run():
        block, gating.BLOCK = gating.BLOCK, None
        try:
            step()
        finally:
            gating.BLOCK = block

    return run


WHOLE = " (whole arrays)"


def adam_steps(d: int, width: int):
    """The optimiser step alone on an SA-GSAE's parameters (fixed gradients): the trainer's fused
    Adam and PyTorch's per-tensor loop."""
    fns = []
    for fused in (True, False):
        sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=d, d_sae=width, l1=0.4))
        for p in sae.parameters():
            p.grad = torch.randn_like(p)
        fns.append(torch.no_grad()(optimizer(sae, 1e-3, fused).step))
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--compile", action="store_true", help="also time the gate code under torch.compile")
    ap.add_argument(
        "--optimizers", action="store_true", help="also time each step with PyTorch's per-tensor Adam loop"
    )
    ap.add_argument(
        "--whole-arrays",
        action="store_true",
        help="also time each Gated-family step with the gate code over whole arrays (gating.BLOCK = None)",
    )
    ap.add_argument("--no-system", action="store_true", help="skip the run with glibc's default allocator")
    a = ap.parse_args()
    try:
        names = [resolve(v.strip()) for v in a.variants.split(",") if v.strip()]
    except SagsaeError as e:
        ap.error(str(e))
    reuse = reuse_large_blocks()
    print(
        f"d={a.d} width={a.width} batch={a.batch} fp32, {torch.get_num_threads()} threads, best of "
        f"{a.repeats}, allocator: {'freed blocks reused' if reuse else 'system default'}"
    )
    print(f"{'architecture':24s} {'ms/step':>9s} {'tok/s':>9s} {'floor ms':>9s} {'x floor':>8s}")
    times = {}
    for name in names:
        gated_family = architecture(name).name in ("gated", "sa-gsae")
        aux = gated_family and settings_of(name).get("aux_coef", 0.0) > 0
        fns = {name: sae_step_fn(name, a.d, a.width, a.batch)}
        if a.optimizers:
            fns[name + LOOP] = sae_step_fn(name, a.d, a.width, a.batch, fused=False)
        if a.compile and gated_family:
            fns[f"{name} (compiled)"] = compiled(sae_step_fn(name, a.d, a.width, a.batch))
        if a.whole_arrays and gated_family:
            fns[name + WHOLE] = whole_arrays(sae_step_fn(name, a.d, a.width, a.batch))
        floor, *steps = best_times([gemm_floor(a.d, a.width, a.batch, aux), *fns.values()], a.repeats)
        for label, t in zip(fns, steps):
            times[label] = t
            print(f"{label:24s} {t * 1e3:9.1f} {a.batch / t:9,.0f} {floor * 1e3:9.1f} {t / floor:8.2f}")
    if "sa-gsae" in times and "gated" in times:
        print(f"sa-gsae / gated at equal width: {times['sa-gsae'] / times['gated']:.2f}x")
    if a.optimizers:
        fused, loop = best_times(adam_steps(a.d, a.width), max(a.repeats, 10))
        print(f"Adam step alone: fused {fused * 1e3:.2f} ms, loop {loop * 1e3:.2f} ms ({fused / loop:.2f}x)")
    for label, t in times.items():
        if label.endswith(LOOP):
            name = label.removesuffix(LOOP)
            print(f"{name}: step with fused Adam / with the loop: {times[name] / t:.2f}x")
        if label.endswith(WHOLE):
            name = label.removesuffix(WHOLE)
            print(
                f"{name}: step with the gate code in row blocks / over whole arrays: {times[name] / t:.2f}x"
            )
    print("floor: 5 GEMMs (7 with the aux decode for the Gated family), timed in turns with each step")
    if reuse and not a.no_system:
        print("\nthe same with glibc's default allocator (a fresh mmap per large array):", flush=True)
        args = [a for a in sys.argv[1:] if a != "--compile"] + ["--no-system"]
        subprocess.run(
            [sys.executable, __file__, *args], env={**os.environ, "SAGSAE_MALLOC": "system"}, check=True
        )


if __name__ == "__main__":
    main()
