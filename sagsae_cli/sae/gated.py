"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014), the paper's baseline.

pi = (x - b_dec) W_enc + b_gate        f = H(pi) ReLU(exp(r_mag) (x - b_dec) W_enc + b_mag)
L  = ||x - x_hat||^2 + lambda ||ReLU(pi)||_1 + ||x - (ReLU(pi) sg(W_dec) + sg(b_dec))||^2
"""

from __future__ import annotations

import torch
from torch import nn

from sagsae_cli.sae.base import SAEConfig
from sagsae_cli.sae.gating import GatedFamily, gate_code


class GatedSAE(GatedFamily):
    saelens_architecture = "gated"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        n = cfg.d_sae
        self.b_gate = nn.Parameter(torch.zeros(n))
        self.r_mag = nn.Parameter(torch.zeros(n))
        self.b_mag = nn.Parameter(torch.zeros(n))

    def _code(self, u: torch.Tensor):
        return gate_code(u, self.b_gate, None, self.r_mag, self.b_mag, two_sided=False)
