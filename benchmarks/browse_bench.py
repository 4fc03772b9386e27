"""The browse statistics pass (census, |a| histograms, streaming top-K per latent and sign) against
the SAE's bare encode on the same rows, and peak memory at two token counts (it must not grow with
tokens: the top-K merge keeps O(batch x latents)). Each configuration runs in its own process so its
peak RSS is its own.

    python benchmarks/browse_bench.py [--d 576] [--width 4608] [--tokens 200k] [--top 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from sagsae_cli.browse import stream_stats
from sagsae_cli.sae import SAEConfig, build_sae


class RandomStore:
    """Rows generated on the fly (deterministic per batch), so the benchmark needs no disk store."""

    def __init__(self, d: int, rows: int):
        self.d, self.n, self.path = d, rows, "random"

    def rows(self, split: str) -> int:
        return self.n

    def read(self, split, start, stop, normalise=False):
        g = torch.Generator().manual_seed(start)
        return torch.randn(stop - start, self.d, generator=g) / self.d**0.5


def child(args) -> None:
    torch.manual_seed(0)
    sae = build_sae("sa-gsae", SAEConfig(architecture="", d_in=args.d, d_sae=args.width, l1=0.4))
    store = RandomStore(args.d, args.tokens)
    sae.init_from_data(store.read("eval", 0, 4096), l0=args.l0)  # a trained SAE's sparsity, not a dense start
    t = time.perf_counter()
    if args.child == "stats":
        stream_stats(sae, store, args.tokens, args.top)
    else:  # the floor: read and encode the same rows, nothing else
        with torch.no_grad():
            for start in range(0, args.tokens, 4096):
                sae.encode(store.read("eval", start, min(start + 4096, args.tokens)))
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    print(json.dumps({"seconds": seconds, "peak_mib": rss}))


def run(kind: str, tokens: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--tokens", str(tokens), "--d", str(args.d),
           "--width", str(args.width), "--top", str(args.top), "--l0", str(args.l0)]  # fmt: skip
    return json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--width", type=int, default=4608)
    p.add_argument("--tokens", type=lambda s: int(float(s.lower().replace("k", "e3").replace("m", "e6"))),
                   default=200_000)  # fmt: skip
    p.add_argument("--top", type=int, default=10)
    p.add_argument(
        "--l0", type=float, default=64.0, help="active latents per token (thresholds set from data)"
    )
    p.add_argument("--child", choices=["stats", "encode"])
    args = p.parse_args()
    if args.child:
        child(args)
        return
    enc, stats = run("encode", args.tokens, args), run("stats", args.tokens, args)
    half = run("stats", args.tokens // 2, args)
    print(
        f"d={args.d} width={args.width} L0~{args.l0:g} tokens={args.tokens:,} top={args.top} threads={torch.get_num_threads()}"
    )
    print(f"encode only:  {args.tokens / enc['seconds']:>10,.0f} tok/s  peak {enc['peak_mib']:,.0f} MiB")
    print(f"browse stats: {args.tokens / stats['seconds']:>10,.0f} tok/s  peak {stats['peak_mib']:,.0f} MiB")
    print(f"ratio stats / encode throughput: {enc['seconds'] / stats['seconds']:.2f}x (goal >= 0.5x)")
    print(
        f"peak at {args.tokens // 2:,} tokens: {half['peak_mib']:,.0f} MiB (bounded memory: about the same)"
    )


if __name__ == "__main__":
    main()
