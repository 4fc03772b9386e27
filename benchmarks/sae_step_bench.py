"""One training step (forward, backward, Adam, decoder constraint) of every architecture, against
the bare matmul floor (the same GEMMs timed alone), all measured in this one run.

    python benchmarks/sae_step_bench.py [--d 576] [--width 4608] [--batch 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from _timing import best_time, sae_step_fn

from sagsae_cli.sae import ARCHITECTURES


def gemm_floor(d: int, n: int, b: int, aux: bool, repeats: int) -> float:
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

    return best_time(run, repeats)


def step_time(name: str, d: int, n: int, b: int, repeats: int) -> float:
    return best_time(sae_step_fn(name, d, n, b, clip=True), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(ARCHITECTURES))
    a = ap.parse_args()
    print(
        f"d={a.d} width={a.width} batch={a.batch} fp32, {torch.get_num_threads()} threads, best of {a.repeats}"
    )
    floors = {aux: gemm_floor(a.d, a.width, a.batch, aux, a.repeats) for aux in (False, True)}
    print(f"{'architecture':16s} {'ms/step':>9s} {'tok/s':>9s} {'x floor':>8s}")
    times = {}
    for name in a.variants.split(","):
        t = step_time(name, a.d, a.width, a.batch, a.repeats)
        times[name] = t
        aux = ARCHITECTURES[name][0] in ("gated", "sa-gsae") and name != "no-aux"
        print(f"{name:16s} {t * 1e3:9.1f} {a.batch / t:9,.0f} {t / floors[aux]:8.2f}")
    print(
        f"GEMM floor: {floors[False] * 1e3:.1f} ms (5 GEMMs), {floors[True] * 1e3:.1f} ms (7 GEMMs, with aux)"
    )
    if "sa-gsae" in times and "gated" in times:
        print(f"sa-gsae / gated at equal width: {times['sa-gsae'] / times['gated']:.2f}x")


if __name__ == "__main__":
    main()
