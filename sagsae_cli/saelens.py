"""SA-GSAE as a SAELens architecture, so ``sae_lens.SAE.load_from_disk(run_dir)`` loads every run
directory sagsae writes (relu, gated, topk and jumprelu load without this; SA-GSAE needs it).

    import sagsae_cli.saelens  # registers "sa-gsae" with SAELens (needs sae-lens installed)
    from sae_lens import SAE
    sae = SAE.load_from_disk("runs/sa-gsae-w2304-l1_0.2-s0")

The inference class computes what ``sagsae_cli/sae/sign_aware.py`` computes (the Bi-Jump-ReLU, tied
or untied, two- or one-sided) on raw activations: sagsae folds the store's norm factor into the
exported weights. Importing this module without sae-lens installed raises a one-line ImportError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

try:
    from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
    from sae_lens.saes.sae import SAE, SAEConfig
except ImportError as e:  # pragma: no cover - exercised only where sae-lens is missing
    raise ImportError("sagsae_cli.saelens needs sae-lens: pip install sae-lens") from e

ARCHITECTURE = "sa-gsae"


@dataclass
class SAGSAEConfig(SAEConfig):
    tied: bool = True  # r+ = r-, b_mag+ = b_mag-
    one_sided: bool = False  # the negative gate never opens
    split_threshold: bool = False  # the negative side has its own threshold (threshold_neg)

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class SAGSAE(SAE[SAGSAEConfig]):
    """Inference-only SA-GSAE (the Bi-Jump-ReLU): f is signed, one decoder row per latent."""

    def __init__(self, cfg: SAGSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.b_enc = None

    def initialize_weights(self) -> None:
        super().initialize_weights()
        z = lambda: nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.b_gate, self.threshold = z(), z()
        if self.cfg.split_threshold:
            self.threshold_neg = z()
        for side in ("",) if self.cfg.tied else ("_pos", "_neg"):
            setattr(self, f"r_mag{side}", z())
            setattr(self, f"b_mag{side}", z())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        u = self.process_sae_in(x) @ self.W_enc
        pi = u + self.b_gate
        if self.cfg.tied:
            m_pos = m_neg = u * self.r_mag.exp() + self.b_mag
        else:
            m_pos = u * self.r_mag_pos.exp() + self.b_mag_pos
            m_neg = u * self.r_mag_neg.exp() + self.b_mag_neg
        m_pos = self.hook_sae_acts_pre(m_pos)
        open_pos = pi > self.threshold
        open_neg = (pi < -(self.threshold_neg if self.cfg.split_threshold else self.threshold)) & (
            not self.cfg.one_sided
        )
        f = torch.where(open_pos & (m_pos > 0), m_pos, 0.0) + torch.where(open_neg & (m_neg < 0), m_neg, 0.0)
        return self.hook_sae_acts_post(f)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)


def register() -> None:
    """Register SA-GSAE with SAELens (idempotent; done on import)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, SAGSAE, SAGSAEConfig)


register()
