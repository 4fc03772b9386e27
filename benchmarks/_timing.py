"""Shared by the benchmarks: best-of-N timing (interleaved for side-by-side ratios), and one SAE training step as a callable."""

import time

import torch

from sagsae_cli.probes import bare_step
from sagsae_cli.run import make_optimizer
from sagsae_cli.sae import SAEConfig, build_sae


def best_time(fn, repeats: int = 3) -> float:
    return best_times([fn], repeats)[0]


def best_times(fns, repeats: int = 3) -> list[float]:
    """Best-of-``repeats`` seconds of each callable after one warm-up call, the callables taking
    turns within each repeat so that a slow spell of a noisy machine hits them all alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def optimizer(sae, lr: float, fused: bool = True) -> torch.optim.Adam:
    """The trainer's Adam (``run.make_optimizer``: fused), or PyTorch's per-tensor loop to compare."""
    if fused:
        return make_optimizer(sae, lr, 1.0)
    return torch.optim.Adam(sae.param_groups(lr), betas=(0.0, 0.999), foreach=False)


def sae_step_fn(variant: str, d: int, width: int, batch: int, k: int = 64, fused: bool = True):
    """One training step of ``variant`` on a fixed random batch, as the trainer takes it: forward,
    backward, then ``run.apply_update`` (decoder constraint, gradient clip, Adam). ``fused=False``
    swaps the trainer's fused Adam for PyTorch's per-tensor loop."""
    sae = build_sae(variant, SAEConfig(architecture="", d_in=d, d_sae=width, l1=0.4, k=k))
    return bare_step(sae, optimizer(sae, 3e-4, fused), torch.randn(batch, d))
