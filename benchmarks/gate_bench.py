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

    def run(block):
        gating.BLOCK = block
        f, s, _, kp, kn, ep, en = gating.forward_blocks(*args, two_sided)
        gating.backward_blocks(g_f, g_s, one, u, s, kp, kn, ep, en, two_sided, need)

    return run


def block_size(text: str) -> int | None:
    return None if text == "none" else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--block",
        default=f"none,{gating.BLOCK}",
        help="comma-separated elements per row block (gating.BLOCK), 'none' = whole arrays; timed in turns",
    )
    a = ap.parse_args()
    blocks = [block_size(b) for b in a.block.split(",")]
    default = gating.BLOCK
    reuse_large_blocks()
    x, y = torch.randn(a.batch, a.width), torch.randn(a.batch, a.width)
    print(f"batch={a.batch} width={a.width} fp32, {torch.get_num_threads()} threads, best of {a.repeats}")
    names = "".join(f" {'block ' + str(b):>13s}" for b in blocks)
    print(f"{'architecture':16s} {'pass ms':>8s}{names}   (x pass)")
    for name, case in CASES.items():
        run = gate_fn(a.batch, a.width, *case)
        one_pass, *ts = best_times([lambda: x + y] + [lambda b=b, run=run: run(b) for b in blocks], a.repeats)
        print(f"{name:16s} {one_pass * 1e3:8.1f}" + "".join(f" {t / one_pass:13.1f}" for t in ts))
    gating.BLOCK = default
    print("each column: the gate code's forward + backward in units of one elementwise pass (x + y)")


if __name__ == "__main__":
    main()
