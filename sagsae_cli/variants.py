"""The names `--variant` accepts (torch-free, so the CLI's help lists them without importing torch).

Each name is an architecture class (``sae.CLASSES``) plus config overrides: the paper's ablations
are entries here, not copies of code. ``sae.build_sae`` turns a name into a model.
"""

from __future__ import annotations

# name -> (architecture class name, config overrides)
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "sa-gsae": ("sa-gsae", {"tied": True}),
    "sa-gsae-untied": ("sa-gsae", {"tied": False}),
    "no-aux": ("sa-gsae", {"alpha": 0.0}),
    "one-sided": ("sa-gsae", {"one_sided": True}),
    "no-reset": ("sa-gsae", {"reset": False}),
    "sa-gsae-split": ("sa-gsae", {"split_threshold": True}),
    "gated": ("gated", {}),
    "relu": ("relu", {}),
    "topk": ("topk", {}),
    "jumprelu": ("jumprelu", {}),
}
ALIASES = {"tied": "sa-gsae", "untied": "sa-gsae-untied", "sagsae": "sa-gsae", "standard": "relu"}
