"""The gate code alone (``sae/gating.py``: forward and backward, no GEMM) of each Gated-family
architecture, in units of one elementwise pass (``a + b`` into a new tokens x latents array), each timed
in turns with that pass. The whole step's ratio to its GEMM floor (``sae_step_bench.py``) moves by
±0.1 between runs on a shared VM; this one isolates the part of the step the gate code owns.

    python benchmarks/gate_bench.py [--width 4608] [--batch 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from _timing import best_times

from sagsae_cli.allocator import reuse_large_blocks
from sagsae_cli.sae import gating

# (untied magnitudes, split thresholds, two-sided, theta): the gate_code calls of the Gated family
CASES = {
    "gated": (False, False, False, False),
    "sa-gsae": (False, False, True, True),
    "one-sided": (False, False, False, True),
    "sa-gsae-split": (False, True, True, True),
    "sa-gsae-untied": (True, False, True, True),
}


def gate_fn(t: int, n: int, untied: bool, split: bool, two_sided: bool, theta: bool):
    g = torch.Generator().manual_seed(0)
    u, g_f, g_s = (torch.randn(t, n, generator=g) for _ in range(3))
    vec = [torch.randn(n, generator=g) * 0.1 for _ in range(5)]
    th = torch.rand(n, generator=g) * 0.5 if theta else None
    args = (
        u,
        vec[0],
        th,
        th if split else None,
        vec[1],
        vec[2],
        vec[3] if untied else None,
        vec[4] if untied else None,
    )
    need = (True, True, theta, split, True, True, untied, untied, False)
    one = torch.tensor(1.0)

    def run():
        f, s, _, kp, kn, ep, en = gating._forward(*args, two_sided)
        gating._backward(g_f, g_s, one, u, s, kp, kn, ep, en, two_sided, need)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    reuse_large_blocks()
    x, y = torch.randn(a.batch, a.width), torch.randn(a.batch, a.width)
    print(f"batch={a.batch} width={a.width} fp32, {torch.get_num_threads()} threads, best of {a.repeats}")
    print(f"{'architecture':16s} {'ms':>8s} {'pass ms':>8s} {'x pass':>7s}")
    for name, case in CASES.items():
        one_pass, t = best_times([lambda: x + y, gate_fn(a.batch, a.width, *case)], a.repeats)
        print(f"{name:16s} {t * 1e3:8.1f} {one_pass * 1e3:8.1f} {t / one_pass:7.1f}")
    print("x pass: the gate code's forward + backward in units of one elementwise pass (x + y)")


if __name__ == "__main__":
    main()
