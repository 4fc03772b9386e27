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
    resets = True

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
    def opening_thresholds(self, x: torch.Tensor, fires: torch.Tensor) -> torch.Tensor:
        """``--reset-mode quantile`` (ours, docs/METHOD.md §4): per latent, a threshold at which it
        (with b_gate = 0) opens on k = ``fires`` rounded (1 to rows - 1) of the rows of ``x`` (a 0-dim
        tensor, e.g. how many rows the average latent fired on in this batch; no host sync): halfway
        between the k-th and (k + 1)-th largest |u_i| (so log/exp rounding cannot open one more), at
        least theta_0. A latent reset there keeps its direction and fires on its best-matching tokens
        at the average rate, instead of on every token as at theta_0."""
        u = self.pre(x.float()).abs().sort(dim=0, descending=True).values
        k = fires.round().long().clamp(1, max(u.shape[0] - 1, 1)).reshape(1, 1).expand(1, u.shape[1])
        edge = (u.gather(0, k - 1) + u.gather(0, k.clamp(max=u.shape[0] - 1))) / 2
        return edge[0].clamp_min(self.cfg.theta0)

    @torch.no_grad()
    def reset_latents(
        self, mask: torch.Tensor, residual: torch.Tensor | None = None, opening: torch.Tensor | None = None
    ) -> dict[str, int]:
        if not self.cfg.reset:
            return {}
        # masked fills, not mask.any() + indexing: no host sync per step (a no-op for an empty mask)
        names = self._threshold_names()
        pointed = residual is not None and residual.shape[0] > 0
        for name in names:
            log_theta = getattr(self, name)
            if opening is not None:  # reopened where it fires on a few tokens (opening_thresholds)
                log_theta.copy_(torch.where(mask, opening.log().to(log_theta.dtype), log_theta))
            else:
                # pointed at a token, a latent starts at the median threshold (a 0-dim tensor: no sync),
                # sparse at once; at theta_0 it would open on every token until its threshold climbs
                if pointed:  # torch.where, not masked_fill_ with a tensor value (that reads it back)
                    log_theta.copy_(torch.where(mask, log_theta.median(), log_theta))
                else:
                    log_theta.masked_fill_(mask, math.log(self.cfg.theta0))
        self.b_gate.masked_fill_(mask, 0.0)
        self.tokens_since_fired.masked_fill_(mask, 0)
        touched = {**dict.fromkeys(names, 0), "b_gate": 0}
        if pointed:
            touched.update(self._point_at_residuals(mask, residual))
        return touched

    def _point_at_residuals(self, mask: torch.Tensor, residual: torch.Tensor) -> dict[str, int]:
        """``--reset-mode residual`` (ours, docs/METHOD.md §4): the i-th reset latent (in index order)
        takes the direction of the batch's i-th worst-reconstructed token, x - x_hat normalised, as its
        decoder row and encoder column, and a plain magnitude (r = 0, b_mag = 0), as Anthropic's
        resampling (2023) does for ReLU SAEs. Deterministic (no RNG: resume stays exact), and still
        masked fills: no host sync."""
        err = residual.float().pow(2).sum(1)
        k = min(residual.shape[0], self.cfg.d_sae)
        worst_err, worst = err.topk(k)
        dirs = residual[worst].float() / worst_err.sqrt().clamp_min(1e-12)[:, None]
        rank = (mask.long().cumsum(0) - 1).clamp(0, k - 1)  # reset latent -> its token among the worst
        take = mask & (worst_err[rank] > 0)  # a zero residual gives no direction: keep the row
        self.W_dec.copy_(torch.where(take[:, None], dirs[rank].to(self.W_dec.dtype), self.W_dec))
        self.W_enc.copy_(torch.where(take[None, :], dirs[rank].T.to(self.W_enc.dtype), self.W_enc))
        mags = [
            n
            for n in ("r_mag", "b_mag", "r_mag_pos", "b_mag_pos", "r_mag_neg", "b_mag_neg")
            if hasattr(self, n)
        ]
        for name in mags:
            getattr(self, name).masked_fill_(take, 0.0)
        return {"W_dec": 0, "W_enc": 1, **dict.fromkeys(mags, 0)}
