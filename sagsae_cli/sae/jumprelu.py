"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435).

    z = (x - b_dec) W_enc + b_enc      f = z H(z - theta)      L = ||x - x_hat||^2 + lambda sum_i H(z_i - theta_i)

H has no gradient; theta gets the paper's straight-through estimate with the rectangle kernel
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
    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        grad_z = g * (z > theta)
        grad_theta = (-(theta * _kernel(z, theta, ctx.eps)) * g).sum(0)
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        return None, (-_kernel(z, theta, ctx.eps) * g).sum(0), None


def jumprelu(z, theta, eps):
    return _JumpReLU.apply(z, theta, eps)


def step(z, theta, eps):
    return _Step.apply(z, theta, eps)


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

    def forward(self, x: torch.Tensor) -> Output:
        z = self.pre(x) + self.b_enc
        theta = self.log_threshold.exp()
        f = jumprelu(z, theta, self.cfg.bandwidth)
        x_hat = self.decode(f)
        l0 = step(z, theta, self.cfg.bandwidth).sum(-1).mean()
        return Output(x_hat, f, {"mse": self.mse(x, x_hat), "sparsity": self.cfg.l1 * l0})
