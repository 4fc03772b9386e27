"""SAEs made elsewhere against ours, side by side in one run: the measuring pass of `sagsae eval`
(`evaluate.measure`: R², L0, census, opposed-pair co-firing) on the same rows for a sagsae ReLU SAE and
the same weights written as a SAELens "standard" directory; then the opposed-pairs search alone on a
16k-latent decoder (cosines in blocks), against one full 16k x 16k cosine matrix where memory allows.

    python benchmarks/foreign_bench.py [--d 576] [--width 4608] [--tokens 50k] [--pairs-width 16384] [--pairs-d 2048]

Prints seconds and ratios measured in this process; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _timing import best_times
from browse_bench import RandomStore
from safetensors.torch import save_file

from sagsae_cli.evaluate import foreign_forward, measure
from sagsae_cli.foreign import load_foreign
from sagsae_cli.metrics import opposed_pairs
from sagsae_cli.sae import SAEConfig, build_sae


class Store(RandomStore):
    norm_factor = 1.0


def saelens_copy(sae, path: Path) -> None:
    """The same ReLU SAE as a SAELens standard directory (cfg.json + sae_weights.safetensors)."""
    path.mkdir(parents=True, exist_ok=True)
    t = {k: v.detach().float().contiguous() for k, v in sae.export_tensors().items()}
    save_file({k: t[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, str(path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "dtype": "float32",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "metadata": {}}  # fmt: skip
    (path / "cfg.json").write_text(json.dumps(cfg))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--pairs-width", type=int, default=16384)
    ap.add_argument("--pairs-d", type=int, default=2048)
    args = ap.parse_args()
    torch.manual_seed(0)
    sae = build_sae("relu", SAEConfig(architecture="", d_in=args.d, d_sae=args.width, l1=0.4))
    store = Store(args.d, args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        saelens_copy(sae, Path(tmp) / "sl")
        fs = load_foreign(Path(tmp) / "sl")

    def ours():
        def forward(x):
            out = sae(x)
            return out.f, out.x_hat, out.losses

        return measure(forward, sae.W_dec.detach(), store, args.tokens, "cpu")

    def theirs():
        return measure(foreign_forward(fs, store), fs.W_dec, store, args.tokens, "cpu")

    a, b = ours()[0], theirs()[0]
    assert abs(a["r2"] - b["r2"]) < 1e-4 and abs(a["l0"] - b["l0"]) < 1e-3, (a, b)  # the same SAE, both ways
    t_ours, t_theirs = best_times([ours, theirs], repeats=3)
    print(f"eval pass, d {args.d}, width {args.width}, {args.tokens:,} tokens: sagsae run {t_ours:.2f} s, "
          f"SAELens directory {t_theirs:.2f} s: ratio {t_theirs / t_ours:.2f} (same R² {a['r2']:.4f})")  # fmt: skip

    w = torch.randn(args.pairs_width, args.pairs_d)
    w[: args.pairs_width // 8] = -w[args.pairs_width // 8 : args.pairs_width // 4] + 0.01 * torch.randn(
        args.pairs_width // 8, args.pairs_d
    )  # some planted pairs
    blocked = lambda: opposed_pairs(w, 0.9)
    full = lambda: torch.nonzero(
        torch.triu(torch.nn.functional.normalize(w.double(), dim=1) @ torch.nn.functional.normalize(w.double(), dim=1).T <= -0.9, 1)
    )  # fmt: skip
    (t_block,) = best_times([blocked], repeats=1)
    found = len(blocked())
    full_bytes = 8 * args.pairs_width**2
    line = f"opposed pairs on {args.pairs_width:,} latents x d {args.pairs_d}: {t_block:.2f} s in blocks of 4,096 ({found:,} pairs)"
    if full_bytes <= 4 * 2**30:
        (t_full,) = best_times([full], repeats=1)
        line += (
            f"; one full matrix ({full_bytes / 2**30:.1f} GiB) {t_full:.2f} s: ratio {t_block / t_full:.2f}"
        )
    print(line)


if __name__ == "__main__":
    main()
