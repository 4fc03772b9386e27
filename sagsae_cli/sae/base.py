"""What every SAE shares: config, encode/decode, unit-norm decoder, init, dead tracking, save/load.

Tensor names and shapes follow SAELens: ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_dec``
(d_in), so a decoder *row* is a latent's direction. The model acts on normalised activations
(x / norm_factor, docs/METHOD.md §6); ``save(..., norm_factor=s)`` folds s into the weights so the exported
SAE acts on raw activations.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sagsae_cli.errors import SagsaeError
from sagsae_cli.files import SAE_CFG as CONFIG
from sagsae_cli.files import SAE_WEIGHTS as WEIGHTS
from sagsae_cli.files import atomic_write


@dataclass
class SAEConfig:
    architecture: str  # the class: sa-gsae, gated, relu, topk, jumprelu (sagsae_cli/registry.py)
    d_in: int
    d_sae: int
    variant: str = ""  # the registry name it was built from (e.g. no-aux)
    l1: float = 0.0  # sparsity coefficient: lambda (L1 / gate L1) or the L0 coefficient (jumprelu)
    k: int = 0  # topk: active latents per token
    dead_tokens: int = 10_000_000  # a latent silent this many tokens counts as dead
    # the architecture's own settings and switches, as the registry declares them (theta0, aux_coef,
    # tied, ...); read as attributes: cfg.theta0. build_sae fills in the defaults and the variant's pins
    settings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # provenance: model_name, hook_name, store, ...

    def __getattr__(self, name: str):
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(f"SAEConfig has no setting {name!r} (its architecture's: {sorted(settings)})")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SAEConfig:
        """A cfg.json's fields. Format of 0.2.0 and before: the settings were top-level keys, the
        auxiliary weight named ``alpha``; they are read into ``settings`` (build_sae keeps those of the
        SAE's own architecture)."""
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if "settings" not in d:
            legacy = {("aux_coef" if k == "alpha" else k): v for k, v in d.items() if k in LEGACY_SETTINGS}
            cfg.settings = legacy
        return cfg


SAELENS_SWITCHES = ("tied", "one_sided", "split_threshold")  # saelens.SAGSAEConfig's fields
# the top-level cfg.json keys of 0.2.0 and before that were settings (SAEConfig.from_json)
LEGACY_SETTINGS = ("alpha", "tied", "one_sided", "reset", "split_threshold", "theta0", "bandwidth", "aux_k",
                   "aux_k_coef")  # fmt: skip


class Output(NamedTuple):
    x_hat: torch.Tensor
    f: torch.Tensor  # latent code (signed for sa-gsae)
    losses: dict[str, torch.Tensor]  # named terms; the training loss is their sum


class SAE(nn.Module):
    """Base class. Subclasses define ``encode`` and ``forward`` (and may extend ``init_params``)."""

    saelens_architecture = "standard"
    threshold_params: tuple[str, ...] = ()  # trained at the threshold lr multiple (TrainConfig)
    resets = False  # whether reset_latents revives dead latents (with SAEConfig.reset)
    knob = "l1"  # the sweep coefficient: "l1" (lambda, passed to forward as ``coef``) or "k" (TopK)
    terms: tuple[str, ...] = ("mse", "sparsity")  # the loss terms forward() may return, in a fixed order

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d, n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.long))
        # build_sae() calls init_params once the subclass has created its own parameters

    # --- init ---------------------------------------------------------------------------------
    @torch.no_grad()
    def init_params(self, generator: torch.Generator) -> None:
        """docs/METHOD.md §4: random unit decoder rows, W_enc = W_dec^T, every bias zero."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        for name, p in self.named_parameters():
            if name.startswith("log_threshold"):
                p.fill_(math.log(self.cfg.theta0))
            elif name not in ("W_enc", "W_dec"):
                p.zero_()

    @torch.no_grad()
    def init_decoder_from_data(self, sample: torch.Tensor, generator: torch.Generator) -> None:
        """Decoder rows = unit-norm centred training rows (x - b_dec) drawn from ``sample`` (without
        replacement while it lasts), W_enc = W_dec^T: every latent starts on a direction the data takes
        rather than a random one (call after init_b_dec). Zero rows keep their random direction."""
        n, rows = self.cfg.d_sae, sample.shape[0]
        rounds = -(-n // max(rows, 1))  # whole permutations of the sample, as many as n latents need
        pick = torch.cat([torch.randperm(rows, generator=generator) for _ in range(rounds)])[:n]
        w = sample[pick].float() - self.b_dec
        norms = w.norm(dim=1, keepdim=True)
        ok = norms.squeeze(1) > 0
        self.W_dec[ok] = w[ok] / norms[ok]
        self.W_enc.copy_(self.W_dec.T)

    @torch.no_grad()
    def init_b_dec(self, sample: torch.Tensor) -> None:
        """b_dec = mean of a data sample (normalised units)."""
        self.b_dec.copy_(sample.float().mean(0))

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, l0: float) -> None:
        """Data-driven start (architectures with thresholds): open each latent's gate on a fraction
        l0 / d_sae of ``sample``'s tokens, so the first step already has an L0 near ``l0``."""

    # --- forward ------------------------------------------------------------------------------
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Shared projection u = (x - b_dec) W_enc, computed as x W_enc - b_dec W_enc so that
        b_dec's gradient is a vector-matrix product, not a third (tokens x d x latents) GEMM."""
        u = torch.addmm(-(self.b_dec @ self.W_enc), x.reshape(-1, x.shape[-1]), self.W_enc)
        return u.reshape(*x.shape[:-1], u.shape[-1])

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, coef: float | None = None) -> Output:
        """Output with named loss terms; ``coef`` is this step's sparsity coefficient (the trainer's
        schedule: warm-up, target-L0 controller), ``cfg.l1`` when None."""
        raise NotImplementedError

    def coef(self, coef: float | None) -> float:
        return self.cfg.l1 if coef is None else coef

    @staticmethod
    def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """||x - x_hat||^2 summed over dimensions, averaged over tokens."""
        return (x - x_hat).pow(2).sum(-1).mean()

    # --- decoder constraint -------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Before the step: drop the gradient component along each (unit) decoder row."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """After the step: renormalise decoder rows to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # --- dead latents -------------------------------------------------------------------------
    @torch.no_grad()
    def update_fired(self, fired: torch.Tensor, n_tokens: int) -> None:
        """Advance the silence counters; ``fired`` marks latents with f != 0 on some token."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired.masked_fill_(fired, 0)  # not [fired] = 0: boolean indexing syncs on CUDA

    def dead_mask(self, window: int | None = None) -> torch.Tensor:
        return self.tokens_since_fired >= (window or self.cfg.dead_tokens)

    def reset_latents(
        self, mask: torch.Tensor, residual: torch.Tensor | None = None, opening: torch.Tensor | None = None
    ) -> dict[str, int]:
        """Reset dead latents (architectures that support it), given this batch's residual x - x_hat
        when they should also be pointed at it, or per-latent thresholds to reopen them at
        (``opening_thresholds``); returns the parameters touched, each with its latent dimension,
        whose optimiser moments the trainer clears at ``mask`` along it."""
        return {}

    # --- bookkeeping --------------------------------------------------------------------------
    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, lr: float, threshold_lr_mult: float = 1.0) -> list[dict]:
        fast = [p for n, p in self.named_parameters() if n in self.threshold_params]
        slow = [p for n, p in self.named_parameters() if n not in self.threshold_params]
        groups = [{"params": slow, "lr": lr, "lr_mult": 1.0}]
        if fast:
            groups.append({"params": fast, "lr": lr * threshold_lr_mult, "lr_mult": threshold_lr_mult})
        return groups

    # --- export format ------------------------------------------------------------------------
    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters under their saved (SAELens) names: a trained log_threshold is saved as
        ``threshold`` (theta itself), as SAELens's JumpReLU does."""
        t = {n: p.detach() for n, p in self.named_parameters()}
        for name in [n for n in t if n.startswith("log_threshold")]:  # also log_threshold_neg
            t[name.removeprefix("log_")] = t.pop(name).exp()
        return t

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        for name in [n for n in tensors if n.startswith("threshold")]:
            tensors["log_" + name] = tensors.pop(name).log()
        missing = {n for n, _ in self.named_parameters()} - set(tensors)
        if missing:
            raise SagsaeError(
                f"saved SAE lacks tensors {sorted(missing)}: was it saved by another architecture?"
            )
        with torch.no_grad():
            for n, p in self.named_parameters():
                p.copy_(tensors[n])

    def save(self, run_dir: str | Path, norm_factor: float = 1.0, l1_final: float | None = None) -> None:
        """Write cfg.json + sae_weights.safetensors atomically, folding ``norm_factor`` in so the
        saved SAE acts on raw activations (W_enc / s, W_dec * s, b_dec * s). ``l1_final``: the
        coefficient a target-L0 run adapted to (``l1`` stays the one it was given)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        t = {k: v.float().clone().contiguous() for k, v in self.export_tensors().items()}
        s = float(norm_factor)
        t["W_enc"] /= s
        t["W_dec"] *= s
        t["b_dec"] *= s
        cfg = {
            **self.cfg.to_json(),
            "architecture": self.saelens_architecture,
            "sagsae_architecture": self.cfg.architecture,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "norm_factor_folded": s,
            "model_name": self.cfg.extra.get("model_name", ""),
            "hook_name": self.cfg.extra.get("hook_name", ""),
            "metadata": dict(self.cfg.extra),
            # the switches SAELens's config of this architecture reads at the top level (saelens.py)
            **{k: v for k, v in self.cfg.settings.items() if k in SAELENS_SWITCHES},
            **({"l1_final": float(l1_final)} if l1_final is not None else {}),
        }
        atomic_write(run_dir / WEIGHTS, lambda p: save_file(t, str(p)))
        atomic_write(run_dir / CONFIG, lambda p: p.write_text(json.dumps(cfg, indent=2)))


def load_sae(run_dir: str | Path, normalised: bool = True) -> tuple[SAE, float]:
    """Load a saved SAE. With ``normalised`` the folded norm factor s is taken back out, so the model
    acts on x / s as during training. Returns (sae, s)."""
    from sagsae_cli.sae import build_sae

    run_dir = Path(run_dir)
    try:
        raw = json.loads((run_dir / CONFIG).read_text())
        tensors = load_file(str(run_dir / WEIGHTS))
    except Exception as e:  # missing, truncated or garbled (safetensors raises its own error type)
        raise SagsaeError(
            f"{run_dir} holds no readable SAE (cfg.json + {WEIGHTS}: {type(e).__name__}): "
            "retrain it with `sagsae train ... --force`"
        ) from None
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise SagsaeError(
            f"{run_dir}: the SAE's {', '.join(sorted(bad))} hold NaN or inf: retrain it with --force"
        )
    cfg = SAEConfig.from_json({**raw, "architecture": raw.get("sagsae_architecture", raw["architecture"])})
    # in memory the SAE carries the coefficient it trained with last: a target-L0 run's adapted one
    # (cfg.json's l1_final; before 0.2.0 such a run wrote it into l1 itself)
    cfg.l1 = float(raw.get("l1_final", cfg.l1))
    sae = build_sae(cfg.variant or cfg.architecture, cfg)
    s = float(raw.get("norm_factor_folded", 1.0))
    if normalised and s != 1.0:
        tensors = dict(tensors)
        tensors["W_enc"] = tensors["W_enc"] * s
        tensors["W_dec"] = tensors["W_dec"] / s
        tensors["b_dec"] = tensors["b_dec"] / s
    sae.import_tensors(tensors)
    return sae, (s if normalised else 1.0)
