"""Pure metric functions (PAPER.md §6) on tensors. Latents are signed: "active" means f != 0."""

from __future__ import annotations

import torch


def l0(f: torch.Tensor) -> float:
    """Mean over tokens of #{i : f_i != 0}: negative activations count."""
    return float((f != 0).sum(-1).float().mean()) if f.shape[0] else 0.0


def fired(f: torch.Tensor) -> torch.Tensor:
    """Per latent: did it fire (either sign) on any token of this batch."""
    return (f != 0).any(0)


class R2:
    """Pooled R² = 1 - sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean||^2, accumulated over batches
    in float64 (the mean is the per-dimension mean over all tokens seen)."""

    def __init__(self):
        self.sse = 0.0
        self.n = 0
        self.sum = None
        self.sum_sq = 0.0

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x64 = x.double()
        self.sse += float((x64 - x_hat.double()).pow(2).sum())
        self.sum = x64.sum(0) if self.sum is None else self.sum + x64.sum(0)
        self.sum_sq += float(x64.pow(2).sum())
        self.n += x.shape[0]

    def value(self) -> float:
        if not self.n:
            return float("nan")
        sst = self.sum_sq - float(self.sum.pow(2).sum()) / self.n
        return 1.0 - self.sse / sst if sst > 0 else float("nan")


def r2(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    acc = R2()
    acc.update(x, x_hat)
    return acc.value()
