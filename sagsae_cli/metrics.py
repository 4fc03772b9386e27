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


def axis_cosines(W_dec: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """|cos| between every decoder row (latent) and every ground-truth axis: (n_latents, K)."""
    w = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    a = axes / axes.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w.double() @ a.double().T).abs()


def axis_recovery(W_dec: torch.Tensor, axes: torch.Tensor, live: torch.Tensor | None = None) -> float:
    """Mean over axes of the best |cos| with any (live) decoder row."""
    cos = axis_cosines(W_dec, axes)
    if live is not None:
        cos = cos[live]
    return float(cos.max(0).values.mean()) if cos.shape[0] else 0.0


def latents_per_axis(
    W_dec: torch.Tensor, axes: torch.Tensor, live: torch.Tensor | None = None, min_cos: float = 0.9
) -> float:
    """Mean over axes of the number of live latents aligned with it (|cos| >= min_cos).
    1 is ideal for a signed SAE on antipodal pairs, 2 for a non-negative one."""
    cos = axis_cosines(W_dec, axes)
    if live is not None:
        cos = cos[live]
    return float((cos >= min_cos).sum(0).double().mean())
