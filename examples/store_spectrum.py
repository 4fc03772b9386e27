"""How many directions a store's activations use: principal components for 50/90/99% of the variance,
the participation ratio and the top component's share, on held-out rows (``metrics.spectrum``).

On SmolLM2-135M layer 15 attn_out uses far fewer directions than resid_mid and mlp_out, and both
architectures retire many more latents there (docs/RESULTS.md):

    python examples/store_spectrum.py out/smol-abl/stores/resid_mid out/smol-abl/stores/mlp_out \\
        out/smol-abl/stores/attn_out --rows 50000
"""

from __future__ import annotations

import argparse
import sys

import torch

from sagsae_cli.errors import SagsaeError
from sagsae_cli.metrics import spectrum
from sagsae_cli.reader import sequential_batches
from sagsae_cli.store import open_store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", help="activation stores (directories or fsspec URLs)")
    ap.add_argument("--rows", type=int, default=50_000, help="held-out rows to read (the eval split)")
    ap.add_argument("--split", default="eval", choices=("eval", "train"), help="which split to read")
    a = ap.parse_args(argv)
    if a.rows < 2:
        print(f"error: --rows must be at least 2 (got {a.rows})", file=sys.stderr)
        return 2
    header = (
        f"{'store':<40} {'rows':>7} {'d':>5} {'dims 50%':>8} {'90%':>5} {'99%':>5} {'PR':>6} {'top-1':>6}"
    )
    for i, path in enumerate(a.stores):
        try:
            store = open_store(path)
            x = torch.cat([b.float() for b in sequential_batches(store, a.split, 8192, max_rows=a.rows)])
            s = spectrum(x)
        except (SagsaeError, ValueError, RuntimeError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        if i == 0:
            print(header)
        print(f"{path:<40} {x.shape[0]:>7,} {x.shape[1]:>5} {s['dims_50']:>8} {s['dims_90']:>5} {s['dims_99']:>5} "
              f"{s['participation_ratio']:>6.1f} {s['top1_share']:>6.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
