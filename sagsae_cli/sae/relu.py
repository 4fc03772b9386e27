"""Standard L1 ReLU SAE: f = ReLU((x - b_dec) W_enc + b_enc), L = ||x - x_hat||^2 + lambda ||f||_1
(decoder rows are unit norm, so the usual ||W_dec_i|| weighting is 1)."""

from __future__ import annotations

import torch
from torch import nn

from sagsae_cli.sae.base import SAE, Output, SAEConfig


class ReLUSAE(SAE):
    saelens_architecture = "standard"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre(x) + self.b_enc)

    def forward(self, x: torch.Tensor, coef: float | None = None) -> Output:
        f = self.encode(x)
        x_hat = self.decode(f)
        return Output(x_hat, f, {"mse": self.mse(x, x_hat), "sparsity": self.coef(coef) * f.sum(-1).mean()})
