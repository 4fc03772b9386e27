"""The one place an SAE architecture declares itself (torch-free, so `--help` lists it without importing
torch): its class, the settings it adds (name, type, default, help, bounds), whether it has thresholds,
resets dead latents or sweeps k; and the variants built from it (an architecture plus fixed settings,
so the paper's ablations are entries, not copies of code), each with its plot colour and whether
`sagsae ablate` trains it.

From here: the `train` / `ablate` flags of every setting (``cli.with_settings``), the settings a
``TrainConfig`` keeps for its variant, ``cfg.json``'s ``settings`` block, what ``load_sae`` restores, a
run's identity (only its own architecture's settings), the plots' colours and the ablation grid.
A new architecture = one file under ``sae/`` + one ``register(...)`` call here (+ its test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sagsae_cli.errors import SagsaeError


@dataclass(frozen=True)
class Setting:
    """One architecture setting: ``--name-with-dashes`` on the command line, ``name`` everywhere else."""

    name: str
    type: type  # float, int or bool
    default: float | int | bool
    help: str
    lo: float | None = None  # the smallest value allowed (None: no bound)
    above: bool = False  # the value must be strictly above ``lo``
    hi: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value) -> None:
        """Refuse (one line) a value outside the bounds or not finite."""
        if self.type is bool:
            return
        parts = [f"> {self.lo:g}" if self.above else f">= {self.lo:g}"] if self.lo is not None else []
        parts += [f"<= {self.hi:g}"] if self.hi is not None else []
        bound = " and ".join(parts)
        ok = math.isfinite(value) and (
            self.lo is None or (value > self.lo if self.above else value >= self.lo)
        ) and (self.hi is None or value <= self.hi)  # fmt: skip
        if not ok:
            raise SagsaeError(
                f"{self.flag} must be a finite number{' ' + bound if bound else ''} (got {value:g})"
            )


@dataclass(frozen=True)
class Architecture:
    name: str
    cls: str  # "module:Class", imported on use
    settings: tuple[Setting, ...] = ()
    structure: dict = field(default_factory=dict)  # fixed switches a variant may flip (tied, one_sided, ...)
    knob: str = "l1"  # the sweep coefficient: "l1" (lambda) or "k" (active latents)
    thresholds: bool = False  # trains log thresholds at the threshold lr multiple
    resets: bool = False  # revives latents silent for the dead window
    slow: bool = False  # needs many optimizer steps (train warns below FEW_STEPS)


@dataclass(frozen=True)
class Variant:
    name: str
    architecture: str
    fixed: dict = field(default_factory=dict)  # settings or switches this variant pins
    color: str = "#7f7f7f"
    label: str = ""  # the plots' legend name (default: the variant's name)
    ablation: bool = False  # trained by `sagsae ablate` at width H


ARCHITECTURES: dict[str, Architecture] = {}
VARIANTS: dict[str, Variant] = {}
ALIASES = {"tied": "sa-gsae", "untied": "sa-gsae-untied", "sagsae": "sa-gsae", "standard": "relu"}


def register(arch: Architecture, *variants: Variant) -> None:
    """Declare an architecture and its variants (the first is usually the architecture's own name)."""
    ARCHITECTURES[arch.name] = arch
    for v in variants:
        VARIANTS[v.name] = v


THETA0 = Setting("theta0", float, 1e-3, "Initial threshold theta_0 (normalised units).", lo=0.0, above=True)
AUX_COEF = Setting("aux_coef", float, 1.0, "Weight alpha of the gated / sa-gsae auxiliary reconstruction term "
                   "(no-aux: 0).", lo=0.0)  # fmt: skip

register(
    Architecture(
        "sa-gsae",
        "sagsae_cli.sae.sign_aware:SignAwareSAE",
        (THETA0, AUX_COEF),
        structure={"tied": True, "one_sided": False, "reset": True, "split_threshold": False},
        thresholds=True,
        resets=True,
        slow=True,
    ),  # fmt: skip
    Variant("sa-gsae", "sa-gsae", color="#d62728", label="SA-GSAE (tied)", ablation=True),
    Variant("sa-gsae-untied", "sa-gsae", {"tied": False}, color="#ff7f0e", ablation=True),
    Variant("no-aux", "sa-gsae", {"aux_coef": 0.0}, color="#8c564b", ablation=True),
    Variant("one-sided", "sa-gsae", {"one_sided": True}, color="#e377c2", ablation=True),
    Variant("no-reset", "sa-gsae", {"reset": False}, color="#bcbd22", ablation=True),
    Variant("sa-gsae-split", "sa-gsae", {"split_threshold": True}, color="#17becf"),
)
register(
    Architecture("gated", "sagsae_cli.sae.gated:GatedSAE", (AUX_COEF,)),
    Variant("gated", "gated", color="#1f77b4", label="Gated SAE", ablation=True),
)
register(Architecture("relu", "sagsae_cli.sae.relu:ReLUSAE"), Variant("relu", "relu", color="#7f7f7f"))
register(
    Architecture(
        "topk",
        "sagsae_cli.sae.topk:TopKSAE",
        (
            Setting("aux_k", int, 256, "TopK: dead latents in the auxK loss.", lo=0),
            Setting("aux_k_coef", float, 1 / 32, "TopK: weight of the auxK loss.", lo=0.0),
        ),
        knob="k",
    ),  # fmt: skip
    Variant("topk", "topk", color="#2ca02c"),
)
register(
    Architecture(
        "jumprelu",
        "sagsae_cli.sae.jumprelu:JumpReLUSAE",
        (
            THETA0,
            Setting(
                "bandwidth", float, 1e-3, "JumpReLU: straight-through rectangle width.", lo=0.0, above=True
            ),
        ),
        thresholds=True,
    ),  # fmt: skip
    Variant("jumprelu", "jumprelu", color="#9467bd"),
)


def resolve(name: str) -> str:
    """A variant's registered name (aliases resolved); one line naming the choices if unknown."""
    key = ALIASES.get(name, name)
    if key not in VARIANTS:
        raise SagsaeError(f"unknown variant {name!r}: choose one of {', '.join([*VARIANTS, *ALIASES])}")
    return key


def variant(name: str) -> Variant:
    return VARIANTS[resolve(name)]


def architecture(name: str) -> Architecture:
    """The architecture of a variant (or an architecture's own name)."""
    return ARCHITECTURES[variant(name).architecture]


def all_settings() -> list[Setting]:
    """Every architecture's settings, each once (a setting two architectures share is one flag)."""
    seen: dict[str, Setting] = {}
    for arch in ARCHITECTURES.values():
        for s in arch.settings:
            seen.setdefault(s.name, s)
    return list(seen.values())


def settings_of(name: str, given: dict | None = None) -> dict:
    """The settings a run of variant ``name`` has: its architecture's, at their defaults or as ``given``
    (other architectures' settings in ``given`` are dropped), then the variant's pinned values."""
    arch, var = architecture(name), variant(name)
    given = given or {}
    own = {s.name: given.get(s.name, s.default) for s in arch.settings}
    return {**own, **{k: v for k, v in var.fixed.items() if k in own}}


def structure_of(name: str) -> dict:
    """The fixed switches of variant ``name`` (e.g. tied False for sa-gsae-untied)."""
    arch, var = architecture(name), variant(name)
    return {**arch.structure, **{k: v for k, v in var.fixed.items() if k in arch.structure}}


def knob(name: str) -> str:
    return architecture(name).knob


def has_thresholds(name: str) -> bool:
    return architecture(name).thresholds


def resets_latents(name: str) -> bool:
    """Whether a variant resets latents silent for the dead window (SA-GSAE's family but ``no-reset``)."""
    return architecture(name).resets and structure_of(name).get("reset", True)


COLORS = {v.name: v.color for v in VARIANTS.values()}
LABELS = {v.name: v.label or v.name for v in VARIANTS.values()}
ABLATION_GRID = [v.name for v in VARIANTS.values() if v.ablation]
