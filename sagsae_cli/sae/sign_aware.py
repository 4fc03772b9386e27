"""SA-GSAE: the sign-aware gated SAE with the Bi-Jump-ReLU (docs/METHOD.md §3-§4).

    u  = (x - b_dec) W_enc                 pi = u + b_gate            theta = exp(log_threshold)
    g+ = H(pi - theta)                     g- = H(-pi - theta)        (at most one side open)
    m+ = exp(r+) u + b_mag+                m- = exp(r-) u + b_mag-
    f  = g+ ReLU(m+) - g- ReLU(-m-)        x_hat = f W_dec + b_dec
    s  = ReLU(pi - theta) - ReLU(-pi - theta)
    L  = ||x - x_hat||^2 + lambda sum|s| + alpha ||x - (s sg(W_dec) + sg(b_dec))||^2

Tied (default): r+ = r- = r_mag, b_mag+ = b_mag- = b_mag. Ablations as config switches:
alpha = 0 (no-aux), one_sided (g- = 0), reset = False (no dead-latent threshold reset),
split_threshold (ours, a convergence candidate: g- = H(-pi - theta-) with its own log_threshold_neg,
so closing one side no longer needs b_gate to move, which opens the other).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sagsae_cli.sae.base import SAEConfig
from sagsae_cli.sae.gating import GatedFamily, gate_code


class SignAwareSAE(GatedFamily):
    saelens_architecture = "sa-gsae"
    threshold_params = ("log_threshold", "log_threshold_neg")

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        n = cfg.d_sae
        self.b_gate = nn.Parameter(torch.zeros(n))
        self.log_threshold = nn.Parameter(torch.zeros(n))
        if cfg.split_threshold:
            self.log_threshold_neg = nn.Parameter(torch.zeros(n))
        sides = ("",) if cfg.tied else ("_pos", "_neg")
        for side in sides:
            setattr(self, f"r_mag{side}", nn.Parameter(torch.zeros(n)))
            setattr(self, f"b_mag{side}", nn.Parameter(torch.zeros(n)))

    def _code(self, u: torch.Tensor):
        """(f, s, sum|s| per token): the Bi-Jump-ReLU code and the gate's signed soft-threshold."""
        if self.cfg.tied:
            mags = (self.r_mag, self.b_mag)
        else:
            mags = (self.r_mag_pos, self.b_mag_pos, self.r_mag_neg, self.b_mag_neg)
        neg = self.log_threshold_neg.exp() if self.cfg.split_threshold else None
        return gate_code(
            u, self.b_gate, self.log_threshold.exp(), *mags, two_sided=not self.cfg.one_sided, theta_neg=neg
        )

    def _threshold_names(self) -> list[str]:
        """log_threshold, and log_threshold_neg when the thresholds are split."""
        return [n for n in self.threshold_params if hasattr(self, n)]

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, l0: float) -> None:
        """theta_i = the (1 - l0 / d_sae) quantile of |u_i| over ``sample`` (b_gate = 0): latent i opens
        (on either side) on a fraction l0 / d_sae of the tokens, so the initial L0 is about ``l0``
        instead of about d_sae (theta_0 = 1e-3 opens nearly every gate)."""
        q = 1.0 - min(max(l0 / self.cfg.d_sae, 0.0), 1.0)
        u = self.pre(sample.float()).abs()
        theta = u.kthvalue(1 + int(round(q * (u.shape[0] - 1))), dim=0).values
        self.b_gate.zero_()
        for name in self._threshold_names():
            getattr(self, name).copy_(theta.clamp_min(1e-6).log())

    @torch.no_grad()
    def reset_latents(self, mask: torch.Tensor) -> list[str]:
        if not self.cfg.reset:
            return []
        # masked fills, not mask.any() + indexing: no host sync per step (a no-op for an empty mask)
        names = self._threshold_names()
        for name in names:
            getattr(self, name).masked_fill_(mask, math.log(self.cfg.theta0))
        self.b_gate.masked_fill_(mask, 0.0)
        self.tokens_since_fired.masked_fill_(mask, 0)
        return [*names, "b_gate"]
