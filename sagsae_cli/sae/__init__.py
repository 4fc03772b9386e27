"""SAE architectures behind one registry: ``build_sae(name, cfg)``.

``CLASSES`` maps architecture names to classes; the variant names (an architecture plus config
overrides, so the paper's ablations are entries, not copies of code) live in ``sagsae_cli.variants``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sagsae_cli.errors import SagsaeError
from sagsae_cli.sae.base import SAE, Output, SAEConfig, load_sae
from sagsae_cli.sae.gated import GatedSAE
from sagsae_cli.sae.jumprelu import JumpReLUSAE
from sagsae_cli.sae.relu import ReLUSAE
from sagsae_cli.sae.sign_aware import SignAwareSAE
from sagsae_cli.sae.topk import TopKSAE
from sagsae_cli.variants import ALIASES, ARCHITECTURES

CLASSES: dict[str, type[SAE]] = {
    "sa-gsae": SignAwareSAE,
    "gated": GatedSAE,
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "jumprelu": JumpReLUSAE,
}


def resolve(name: str) -> str:
    key = ALIASES.get(name, name)
    if key not in ARCHITECTURES:
        known = ", ".join([*ARCHITECTURES, *ALIASES])
        raise SagsaeError(f"unknown variant {name!r}: choose one of {known}")
    return key


def knob(name: str) -> str:
    """The coefficient a variant sweeps: "l1" (a sparsity coefficient) or "k" (active latents)."""
    return CLASSES[ARCHITECTURES[resolve(name)][0]].knob


def has_thresholds(name: str) -> bool:
    """Whether a variant trains parameters at the threshold lr multiple (``SAE.threshold_params``)."""
    return bool(CLASSES[ARCHITECTURES[resolve(name)][0]].threshold_params)


def resets_latents(name: str) -> bool:
    """Whether a variant resets latents silent for the dead window (SA-GSAE's family but ``no-reset``)."""
    arch, overrides = ARCHITECTURES[resolve(name)]
    return CLASSES[arch].resets and overrides.get("reset", True)


def build_sae(name: str, cfg: SAEConfig, seed: int = 0) -> SAE:
    """The SAE registered as ``name``, with its overrides applied to ``cfg``, initialised from ``seed``."""
    key = resolve(name)
    arch, overrides = ARCHITECTURES[key]
    cfg = replace(cfg, architecture=arch, variant=key, **overrides)
    sae = CLASSES[arch](cfg)
    sae.init_params(torch.Generator().manual_seed(seed))
    return sae


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "Output",
    "SAEConfig",
    "build_sae",
    "knob",
    "load_sae",
    "resets_latents",
    "resolve",
]
