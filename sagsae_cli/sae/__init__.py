"""SAE architectures behind one registry (``sagsae_cli/registry.py``): ``build_sae(name, cfg)``."""

from __future__ import annotations

import importlib
from dataclasses import replace

import torch

from sagsae_cli.registry import (
    ARCHITECTURES,
    VARIANTS,
    architecture,
    has_thresholds,
    knob,
    resets_latents,
    resolve,
    settings_of,
    structure_of,
)
from sagsae_cli.sae.base import SAE, Output, SAEConfig, load_sae


def sae_class(name: str) -> type[SAE]:
    """The class of a variant's architecture (imported from the registry's ``module:Class``)."""
    module, cls = architecture(name).cls.split(":")
    return getattr(importlib.import_module(module), cls)


def build_sae(name: str, cfg: SAEConfig, seed: int = 0) -> SAE:
    """The SAE registered as ``name``, initialised from ``seed``: ``cfg.settings`` completed with its
    architecture's defaults, the variant's pinned values and its switches (a saved cfg.json's own
    switches are kept)."""
    key = resolve(name)
    switches = structure_of(key)
    structure = {**switches, **{k: v for k, v in cfg.settings.items() if k in switches}}
    settings = {**settings_of(key, cfg.settings), **structure}
    cfg = replace(cfg, architecture=architecture(key).name, variant=key, settings=settings)
    sae = sae_class(key)(cfg)
    sae.init_params(torch.Generator().manual_seed(seed))
    return sae


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "VARIANTS",
    "Output",
    "SAEConfig",
    "build_sae",
    "has_thresholds",
    "knob",
    "load_sae",
    "resets_latents",
    "resolve",
    "sae_class",
]
