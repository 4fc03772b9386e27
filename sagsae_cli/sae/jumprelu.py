"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435).

    z = (x - b_dec) W_enc + b_enc      f = z H(z - theta)      L = ||x - x_hat||^2 + lambda sum_i H(z_i - theta_i)

H has no gradient; theta gets the JumpReLU paper's (Rajamanoharan et al. 2024) straight-through estimate with the rectangle kernel
K(u) = 1[|u| < 1/2] and bandwidth eps:
    d JumpReLU(z) / d theta = -(theta / eps) K((z - theta) / eps)
    d H(z - theta) / d theta = -(1 / eps) K((z - theta) / eps)
"""

from __future__ import annotations

import torch
from torch import nn

from sagsae_cli.sae.base import SAE, Output, SAEConfig


def _kernel(z, theta, eps):
    return ((z - theta).abs() < eps / 2).to(z.dtype) / eps


class _JumpReLU(torch.autograd.Function):
    """(f, L0) = (z H(z - theta), mean over tokens of sum_i H(z_i - theta_i)) in one pass, with the
    straight-through gradients of the module docstring (the kernel is computed once for both)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        active = z > theta
        ctx.save_for_backward(z, theta, active)
        ctx.eps = eps
        return z * active, active.sum(dtype=z.dtype) / max(z.shape[0], 1)

    @staticmethod
    def backward(ctx, g_f, g_l0):
        z, theta, active = ctx.saved_tensors
        k = _kernel(z, theta, ctx.eps)
        grad_z = grad_theta = None
        if g_f is not None:
            grad_z = g_f * active
            grad_theta = -(theta * (k * g_f).sum(0))
        if g_l0 is not None:
            l0_term = -(g_l0 / max(z.shape[0], 1)) * k.sum(0)
            grad_theta = l0_term if grad_theta is None else grad_theta + l0_term
        return grad_z, grad_theta, None


def jumprelu(z, theta, eps):
    """JumpReLU with the straight-through threshold gradient."""
    return _JumpReLU.apply(z, theta, eps)[0]


def step(z, theta, eps):
    """Per-token count of active latents, summed: sum over tokens of H(z - theta), averaged."""
    return _JumpReLU.apply(z, theta, eps)[1]


class JumpReLUSAE(SAE):
    saelens_architecture = "jumprelu"
    threshold_params = ("log_threshold",)

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.log_threshold = nn.Parameter(torch.zeros(cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre(x) + self.b_enc
        return z * (z > self.log_threshold.exp())

    def forward(self, x: torch.Tensor, coef: float | None = None) -> Output:
        z = self.pre(x) + self.b_enc
        theta = self.log_threshold.exp()
        f, l0 = _JumpReLU.apply(z, theta, self.cfg.bandwidth)
        x_hat = self.decode(f)
        return Output(x_hat, f, {"mse": self.mse(x, x_hat), "sparsity": self.coef(coef) * l0})
