"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations (after ReLU), plus the auxK loss:
the top ``aux_k`` dead latents reconstruct the residual x - x_hat (coefficient ``aux_k_coef``)."""

from __future__ import annotations

import torch
from torch import nn

from sagsae_cli.sae.base import SAE, Output, SAEConfig


class TopKSAE(SAE):
    saelens_architecture = "topk"
    knob = "k"  # no sparsity coefficient: ``coef`` is ignored
    terms = ("mse", "aux")

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        if not 0 < cfg.k <= cfg.d_sae:
            raise ValueError("topk needs 0 < k <= width")
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))

    @staticmethod
    def _topk(z: torch.Tensor, k: int) -> torch.Tensor:
        vals, idx = z.topk(k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._topk(self.pre(x) + self.b_enc, self.cfg.k)

    def forward(self, x: torch.Tensor, coef: float | None = None) -> Output:
        z = self.pre(x) + self.b_enc
        f = self._topk(z, self.cfg.k)
        x_hat = self.decode(f)
        losses = {"mse": self.mse(x, x_hat)}
        if self.training:
            # no host sync: the top aux_k of the dead latents' pre-activations, the live ones at -inf
            # (ReLU makes any of those picked 0), and the term multiplied by "some latent is dead"
            dead = self.dead_mask()
            aux = self._topk(z.masked_fill(~dead, float("-inf")), min(self.cfg.aux_k, self.cfg.d_sae))
            resid = (x - x_hat).detach()
            aux_loss = self.mse(resid, aux @ self.W_dec)
            scaled = self.cfg.aux_k_coef * aux_loss / resid.pow(2).sum(-1).mean().clamp_min(1e-12)
            losses["aux"] = torch.where(dead.any(), scaled, torch.zeros_like(scaled))
        return Output(x_hat, f, losses)
