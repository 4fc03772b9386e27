"""The training recipe: a run's settings (``TrainConfig``), the budget-derived ones resolved in one place
(``resolve_recipe``: batch, lr, threshold lr multiple, dead window; docs/METHOD.md §8), the lr and
lambda schedules, and the runs of a sweep (``sweep_configs``). Torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.registry import architecture, knob, resets_latents, resolve, settings_of

# Budget-aware defaults (docs/METHOD.md §8): SA-GSAE needs optimizer steps more than tokens, so a
# run's batch is chosen to give it about TARGET_STEPS steps, within [MIN_BATCH, MAX_BATCH].
TARGET_STEPS = 8_000
MIN_BATCH, MAX_BATCH = 128, 4096
AUTO_LR = 2e-3  # every converged run of the convergence study used it (3e-4 ended dense at 2M tokens)
# --threshold-lr-mult auto: steps x (log theta's lr) = THRESHOLD_BUDGET, the multiple kept within [1, 10]. The
# reconstruction's 10x (../shared/PAPER.md; the abstract gives no recipe) up to 5,000 steps at lr 2e-3; 3.2x for the CPU recipe (15,625 steps), where 10x made SA-GSAE's
# thresholds overshoot and its latents die, and 1x left them still climbing at the end (docs/METHOD.md §8)
THRESHOLD_BUDGET = 100.0
FEW_STEPS = 4_000  # below this a run is warned that it may stop before SA-GSAE converges


# --dead-window auto: a latent silent for 1.25% of the run is reset, but never sooner than DEAD_MIN tokens
# nor later than 10% of the run (the legacy rule) or DEAD_MAX tokens. On the synthetic
# superposition store 50k of 4M found every axis that 400k left missing; on SmolLM2 resid_mid, mlp_out and
# attn_out 25k of 2M cost no R² and left fewer latents dead (docs/METHOD.md §8). Short runs keep 10%.
DEAD_FRACTION, DEAD_MIN, DEAD_MAX = 0.0125, 25_000, 10_000_000
# no resets in the final 10% of a run at least (the old window's span), whatever the window
RESET_FREE_TAIL = 0.1

# what a dead-latent reset does (docs/METHOD.md §4): our reconstruction's (theta_0, b_gate 0), also pointing the latent
# at the batch's worst-reconstructed token, or reopening it where it fires on a few of the batch's tokens
RESET_MODES = ("threshold", "residual", "quantile")
QUANTILE_CHECKS = 16  # --reset-mode quantile looks for dead latents this many times per dead window


def auto_dead_window(tokens: int, batch: int) -> int:
    """Tokens of silence after which ``auto`` resets a latent: 1.25% of the run within [DEAD_MIN, 10% of
    the run], at most DEAD_MAX, at least one batch: 25k for 2M tokens, 50k for 4M, 15k for 150k."""
    return int(max(batch, min(DEAD_MAX, tokens // 10, max(DEAD_MIN, int(tokens * DEAD_FRACTION)))))


def legacy_dead_window(tokens: int, batch: int) -> int:
    """10% of the run within [one batch, DEAD_MAX]: the window of every run recorded with ``dead_window`` 0
    (train_cfg.json format of 0.1.0 before 2026-12-02), and still the default of variants that reset nothing
    (their training log's dead fraction and TopK's auxK count dead latents; no evidence to move them)."""
    return min(DEAD_MAX, max(batch, tokens // 10))


def default_dead_window(variant: str, tokens: int, batch: int) -> int:
    """``--dead-window auto``: auto_dead_window for variants that reset dead latents, else the legacy 10%."""
    try:
        resets = resets_latents(variant)
    except SagsaeError:  # an unknown variant: validate() says so
        resets = False
    return auto_dead_window(tokens, batch) if resets else legacy_dead_window(tokens, batch)


def auto_batch(tokens: int) -> int:
    """The largest power of two <= tokens / TARGET_STEPS, clamped to [MIN_BATCH, MAX_BATCH]."""
    want = max(1, tokens // TARGET_STEPS)
    return int(min(MAX_BATCH, max(MIN_BATCH, 1 << (want.bit_length() - 1))))


def auto_threshold_lr_mult(lr: float, steps: int) -> float:
    """The multiple of ``lr`` at which log thresholds learn under ``auto``: THRESHOLD_BUDGET / (steps x lr)
    within [1, 10] (10 is our reconstruction's): 10 for the quickstart's 1,172 steps, 3.2 for 15,625 at 2e-3."""
    return min(10.0, max(1.0, THRESHOLD_BUDGET / (max(steps, 1) * lr)))


# the settings TrainConfig takes as "auto"
AUTO = ("batch", "lr", "threshold_lr_mult", "dead_window")


def resolve_recipe(variant: str, tokens: int, given: dict | None = None) -> dict:
    """The budget-derived settings of a run of ``variant`` over ``tokens``: each of AUTO as ``given``,
    else its automatic value (docs/METHOD.md §8): the batch for about TARGET_STEPS steps, lr AUTO_LR, the
    threshold lr multiple for THRESHOLD_BUDGET over the steps, the dead window of the variant. Pure:
    the CLI and the Python API both reach it through TrainConfig."""
    given = given or {}
    batch = given["batch"] if "batch" in given else auto_batch(tokens)
    lr = given["lr"] if "lr" in given else AUTO_LR
    steps = max(1, math.ceil(tokens / max(batch, 1)))
    mult = (
        given["threshold_lr_mult"]
        if "threshold_lr_mult" in given
        else auto_threshold_lr_mult(max(lr, 1e-30), steps)
    )
    window = (
        given["dead_window"]
        if "dead_window" in given
        else default_dead_window(variant, tokens, max(batch, 1))
    )
    return {"batch": batch, "lr": lr, "threshold_lr_mult": mult, "dead_window": window}


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "sa-gsae"
    width: int = 4608
    l1: float = 0.4  # lambda; the L0 coefficient for jumprelu; unused by topk
    k: int = 0  # topk
    target_l0: float = 0.0  # > 0: adapt the coefficient during training to land at this L0
    seed: int = 0  # model init
    data_seed: int = 0  # batch order (shared by every run of a sweep)
    data_shards: int = 0  # shards of each global batch (0 = the world size); fixes the batch order
    tokens: int = 50_000_000
    # the budget-derived settings take "auto" (resolve_recipe) or a value
    batch: int | str = "auto"  # global batch (all ranks together)
    lr: float | str = "auto"
    threshold_lr_mult: float | str = "auto"  # log thresholds learn at this multiple of lr
    warmup_steps: int = 1000  # capped at 10% of the run
    decay_frac: float = 0.2
    l1_warmup_frac: float = 0.05
    init_l0: float = 0.0  # > 0: data-driven thresholds that open at about this L0 at step 0
    init_decoder: str = "random"  # "data": decoder rows = centred training rows (W_enc = W_dec^T)
    clip: float = 1.0
    # the architecture's own settings (sagsae_cli/registry.py: theta0, aux_coef, bandwidth, aux_k, ...): those
    # given; registry.settings_of completes them with its defaults and the variant's pinned values
    settings: dict = field(default_factory=dict)
    dead_window: int | str = "auto"  # tokens of silence before a latent is reset
    reset_mode: str = "threshold"  # what a dead-latent reset does: one of RESET_MODES
    checkpoint_every: int = 1000  # steps
    snapshots: int = 8  # SAE-only snapshots at evenly spaced steps (for `eval --checkpoints`); 0 = none
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    log_every: int = 50  # steps
    store: str = ""
    extra: dict = field(default_factory=dict)

    # the settings given as "auto" and the values they took: resolved in __post_init__ (so train_cfg.json
    # records what was used and which were automatic) and again when dataclasses.replace changes the run
    # (a sweep's variant, a longer --tokens); a setting that replace gives a value of its own is no longer auto
    auto: dict = field(default_factory=dict)

    def __post_init__(self):
        took = dict(self.auto)
        names = [n for n in AUTO if getattr(self, n) == "auto" or (n in took and getattr(self, n) == took[n])]
        values = resolve_recipe(
            self.variant, self.tokens, {n: getattr(self, n) for n in AUTO if n not in names}
        )
        for name in names:
            object.__setattr__(self, name, values[name])
        object.__setattr__(self, "auto", {n: values[n] for n in sorted(names)})

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.batch))

    @property
    def reset_until(self) -> int:
        """The first step at which dead latents are no longer reset: where the lr decay starts, one dead
        window before the end, or RESET_FREE_TAIL of the run before the end, whichever comes first. A
        latent reset later has no time to raise its threshold again (with ``--lr-decay 0`` latents reset
        near the end kept thresholds near theta_0 and fired on 35-84% of the tokens at the last step; a
        25k-token window at a constant lr left attn_out 0.04 R² under its frontier; docs/METHOD.md §4)."""
        window = math.ceil(self.dead_window / self.batch)
        tail = max(window, math.ceil(self.steps * RESET_FREE_TAIL))
        return max(0, min(int(self.steps * (1 - self.decay_frac)), self.steps - tail))

    @property
    def reset_every(self) -> int:
        """Steps between dead-latent resets: every step, but under ``--reset-mode quantile`` (whose opening
        thresholds sort the batch x width array) every 1/QUANTILE_CHECKS of the dead window, so a latent
        is reset at most that much late and the sort runs on a few steps only."""
        if self.reset_mode != "quantile":
            return 1
        return max(1, math.ceil(self.dead_window / self.batch) // QUANTILE_CHECKS)

    @property
    def run_id(self) -> str:
        if knob(self.variant) == "k":
            coef = f"k{self.k}"
        elif self.target_l0 > 0:
            coef = f"l0_{self.target_l0:g}"
        else:
            coef = f"l1_{self.l1:g}"
        return f"{resolve(self.variant)}-w{self.width}-{coef}-s{self.seed}"

    def validate(self) -> None:
        resolve(self.variant)
        for setting in architecture(self.variant).settings:
            setting.check(settings_of(self.variant, self.settings)[setting.name])
        if self.width <= 0:
            raise SagsaeError(f"--width must be positive (got {self.width})")
        if not (0 <= self.l1 < math.inf and 0 <= self.target_l0 < math.inf):
            raise SagsaeError(
                f"--l1 and --target-l0 must be finite numbers >= 0 (got {self.l1:g}, {self.target_l0:g})"
            )
        if self.target_l0 > self.width:
            raise SagsaeError(
                f"--target-l0 {self.target_l0:g} exceeds the width {self.width}: an SAE cannot fire more latents "
                "than it has; choose a target below the width"
            )
        if self.init_decoder not in ("random", "data"):
            raise SagsaeError(f"--init-decoder is random or data (got {self.init_decoder!r})")
        if self.reset_mode not in RESET_MODES:
            raise SagsaeError(f"--reset-mode is {', '.join(RESET_MODES)} (got {self.reset_mode!r})")
        if knob(self.variant) == "k" and not 0 < self.k <= self.width:
            raise SagsaeError(f"{self.variant} needs 0 < --k <= --width (got k={self.k}, width={self.width})")
        if self.tokens <= 0 or self.batch <= 0 or not 0 < self.lr < math.inf:
            raise SagsaeError("--tokens must be positive, --batch and --lr positive or auto")
        if not 0 < self.threshold_lr_mult < math.inf:
            raise SagsaeError(
                f"--threshold-lr-mult must be a positive number or auto (got {self.threshold_lr_mult:g})"
            )
        if self.dead_window < 1:
            raise SagsaeError(f"--dead-window must be at least one token, or auto (got {self.dead_window})")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise SagsaeError("Adam betas must lie in [0, 1)")
        for flag, value in (("--checkpoint-every", self.checkpoint_every), ("--log-every", self.log_every)):
            require(value >= 1, f"{flag} must be >= 1 (got {value})")
        for flag, value in (("--data-shards", self.data_shards), ("--snapshots", self.snapshots),
                            ("--warmup-steps", self.warmup_steps), ("--init-l0", self.init_l0)):  # fmt: skip
            require(0 <= value < math.inf, f"{flag} must be >= 0 (got {value:g})")
        for flag, value in (("--l1-warmup", self.l1_warmup_frac), ("--lr-decay", self.decay_frac)):
            require(0 <= value <= 1, f"{flag} is a fraction of the run in [0, 1] (got {value:g})")

    @property
    def snapshot_steps(self) -> set[int]:
        """Steps after which an SAE-only snapshot is kept (the final step is the run itself)."""
        n = min(self.snapshots, self.steps - 1)
        return (
            {round(i * self.steps / (n + 1)) for i in range(1, n + 1)} - {0, self.steps} if n > 0 else set()
        )


def lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = max(1, min(cfg.warmup_steps, cfg.steps // 10))
    decay_start = int(cfg.steps * (1 - cfg.decay_frac))
    f = min(1.0, (step + 1) / warm)
    if step >= decay_start:
        f *= max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
    return f


def l1_factor(step: int, cfg: TrainConfig) -> float:
    warm = int(cfg.steps * cfg.l1_warmup_frac)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def sweep_configs(
    base: TrainConfig,
    variants: list[str],
    l1: list[float],
    k: list[int],
    target_l0: list[float],
    seeds: list[int],
) -> list[TrainConfig]:
    """Every (variant, coefficient or target, seed) of a `sagsae train` sweep. A variant whose knob is k
    sweeps ``k``; the others sweep ``l1`` or, with targets, start every target-L0 run at the first l1."""
    cfgs = []
    for v in variants:
        if knob(v) == "k":
            points = [{"l1": 0.0, "k": kk, "target_l0": 0.0} for kk in k]
        elif target_l0:
            points = [{"l1": l1[0], "k": 0, "target_l0": t} for t in target_l0]
        else:
            points = [{"l1": c, "k": 0, "target_l0": 0.0} for c in l1]
        cfgs += [replace(base, variant=v, seed=s, **p) for p in points for s in seeds]
    return cfgs
