"""The training loop (docs/METHOD.md §4): Adam (betas 0, 0.999), linear lr warm-up and final-20% decay,
log thresholds at a budget-aware lr multiple, lambda warm-up, gradient clip, unit-norm decoder,
dead-latent threshold resets, atomic checkpoints and exact resume. Several runs (a sweep) share each
batch read from the store.
Under torchrun each rank reads its own shard; gradients, losses and dead-latent counters are summed
across ranks (weighted by rows, so a short or empty tail batch is exact) and rank 0 writes.

A run directory holds ``cfg.json`` (the SAE, SAELens-style) + ``sae_weights.safetensors`` when done,
``train_cfg.json`` (what produced it), ``checkpoints/last.pt`` and ``history.parquet``.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from sagsae_cli.distributed import (
    World,
    all_agree,
    all_reduce_sum,
    barrier,
    init_world,
    on_main,
    pick_device,
    warn_of_busy_cores,
)
from sagsae_cli.errors import SagsaeError
from sagsae_cli.faults import fault_point
from sagsae_cli.files import (
    HISTORY,
    SAE_CFG,
    SAE_WEIGHTS,
    TRAIN_CFG,
    atomic_write,
    lock_dir,
    read_json,
    torch_save,
    unlock,
)
from sagsae_cli.location import Location
from sagsae_cli.metrics import R2, fired
from sagsae_cli.progress import console, progress_bar, styled
from sagsae_cli.reader import DeviceFeed, ShuffledBatches
from sagsae_cli.sae import (
    ARCHITECTURES,
    SAE,
    SAEConfig,
    build_sae,
    has_thresholds,
    knob,
    resets_latents,
    resolve,
)
from sagsae_cli.store import open_store


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
    batch: int = 4096  # global batch (all ranks together)
    lr: float = 3e-4
    threshold_lr_mult: float = 0.0  # 0 = auto, from the lr and the steps (auto_threshold_lr_mult)
    warmup_steps: int = 1000  # capped at 10% of the run
    decay_frac: float = 0.2
    l1_warmup_frac: float = 0.05
    init_l0: float = 0.0  # > 0: data-driven thresholds that open at about this L0 at step 0
    init_decoder: str = "random"  # "data": decoder rows = centred training rows (W_enc = W_dec^T)
    clip: float = 1.0
    theta0: float = 1e-3
    aux_coef: float = 1.0  # alpha of the gated / sa-gsae auxiliary term (the no-aux variant forces 0)
    dead_window: int = 0  # tokens; 0 = default_dead_window (resolved in __post_init__)
    reset_mode: str = "threshold"  # what a dead-latent reset does: one of RESET_MODES
    checkpoint_every: int = 1000  # steps
    snapshots: int = 8  # SAE-only snapshots at evenly spaced steps (for `eval --checkpoints`); 0 = none
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    log_every: int = 50  # steps
    store: str = ""
    extra: dict = field(default_factory=dict)

    # settings given as 0 = auto and the values they took: derived from the run in __post_init__ (so
    # train_cfg.json records what was used) and again when dataclasses.replace changes the run (a sweep's
    # variant, a longer --tokens); a setting that replace gives a value of its own is no longer auto
    auto: dict = field(default_factory=dict)

    def __post_init__(self):
        took = dict(self.auto)
        names = [n for n in _AUTO if getattr(self, n) <= 0 or (n in took and getattr(self, n) == took[n])]
        for name in names:
            object.__setattr__(self, name, _AUTO[name](self))
        object.__setattr__(self, "auto", {n: getattr(self, n) for n in sorted(names)})

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
        if self.width <= 0:
            raise SagsaeError(f"--width must be positive (got {self.width})")
        if self.l1 < 0 or self.target_l0 < 0:
            raise SagsaeError(f"sparsity coefficients and --target-l0 must be non-negative (got {self.l1})")
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
        if self.tokens <= 0 or self.batch <= 0 or self.lr <= 0:
            raise SagsaeError("--tokens, --batch and --lr must be positive")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise SagsaeError("Adam betas must lie in [0, 1)")

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
    """``--dead-window`` 0: auto_dead_window for variants that reset dead latents, else the legacy 10%."""
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


# TrainConfig's auto settings (0 on the command line): how each is derived from the rest of the config
_AUTO = {
    "threshold_lr_mult": lambda c: auto_threshold_lr_mult(c.lr, c.steps),
    "dead_window": lambda c: default_dead_window(c.variant, c.tokens, c.batch),
}


def resolve_batch_lr(tokens: int, batch: str | int, lr: str | float) -> tuple[int, float]:
    """``--batch`` / ``--lr`` as given, or their budget-aware values for ``auto``."""
    b = auto_batch(tokens) if str(batch).strip().lower() == "auto" else int(float(batch))
    r = AUTO_LR if str(lr).strip().lower() == "auto" else float(lr)
    return b, r


def make_optimizer(sae: SAE, lr: float, threshold_lr_mult: float, betas=(0.0, 0.999)) -> torch.optim.Adam:
    """The trainer's Adam over ``sae``'s parameter groups (thresholds at ``threshold_lr_mult`` x lr).
    PyTorch's fused kernel where it has one (CPU, CUDA): one pass per parameter instead of about
    seven (docs/METHOD.md §4; benchmarks/sae_step_bench.py --optimizers times it against the loop)."""
    device = next(sae.parameters()).device.type
    fused = {"fused": True} if device in ("cpu", "cuda") else {}
    return torch.optim.Adam(sae.param_groups(lr, threshold_lr_mult), betas=tuple(betas), **fused)


def apply_update(sae: SAE, opt: torch.optim.Optimizer, clip: float) -> None:
    """One constrained step from the gradients in place: drop each decoder row's parallel gradient,
    clip the global gradient norm, Adam, renormalise the decoder rows (docs/METHOD.md §4)."""
    sae.remove_parallel_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
    opt.step()
    sae.normalise_decoder()


L0_GAIN = 0.05  # target-L0 controller: log(coef) moves by this x the relative L0 error per step


class Run:
    """One SAE being trained: model, optimiser, step and history, with checkpoint/resume."""

    def __init__(
        self, cfg: TrainConfig, d_in: int, out: Path, sample: torch.Tensor, world: World, force: bool,
        locks: RunLocks | None = None,
    ):  # fmt: skip
        self.cfg, self.dir, self.world = cfg, out / cfg.run_id, world
        if world.main and locks is not None:
            locks.take(self.dir)
        sae_cfg = SAEConfig(
            architecture="", d_in=d_in, d_sae=cfg.width, l1=cfg.l1, k=cfg.k, theta0=cfg.theta0,
            alpha=cfg.aux_coef, dead_tokens=cfg.dead_window, extra=dict(cfg.extra),
        )  # fmt: skip
        self.sae: SAE = build_sae(cfg.variant, sae_cfg, seed=cfg.seed)
        self.sae.init_b_dec(sample)
        if cfg.init_decoder == "data":
            self.sae.init_decoder_from_data(sample, torch.Generator().manual_seed(cfg.seed))
        if cfg.init_l0 > 0:
            self.sae.init_from_data(sample[:8192], cfg.init_l0)
        self.sae.to(world.device)
        self.opt = make_optimizer(self.sae, cfg.lr, cfg.threshold_lr_mult, (cfg.adam_beta1, cfg.adam_beta2))
        self.step, self.history, self.coef = 0, [], cfg.l1
        self._bad: torch.Tensor | None = None  # first non-finite step, its loss, bad batch (_watch_finite)
        self._claim(force)

    @property
    def coef(self) -> float:
        """The sparsity coefficient now; a target-L0 run adapts it on the device (read back only here:
        at log steps, checkpoints and exports)."""
        return float(self._coef_t) if self._coef_t is not None else self._coef

    @coef.setter
    def coef(self, value: float) -> None:
        self._coef = float(value)
        on_device = self.cfg.target_l0 > 0
        self._coef_t = (
            torch.tensor(self._coef, dtype=torch.float64, device=self.world.device) if on_device else None
        )

    @property
    def ckpt(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def done(self) -> bool:
        return self.exported and self.step >= self.cfg.steps

    def _claim(self, force: bool) -> None:
        """Start or resume the run. Rank 0 alone reads the run directory and hands every rank its
        checkpoint, so ranks on other nodes need no shared file system (nor the same --out)."""
        state, self.exported = on_main(lambda: self._claim_main(force), self.world)
        if state is not None:
            self.sae.load_state_dict(state["sae"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.history, self.coef = (
                state["step"],
                state["history"],
                state.get("coef", self.cfg.l1),
            )

    def _claim_main(self, force: bool) -> tuple[dict | None, bool]:
        """(checkpoint state or None, whether the run's weights were exported), on rank 0."""
        record = self.dir / TRAIN_CFG
        mine = json.loads(json.dumps(asdict(self.cfg), default=str))
        if record.exists() and not force:
            theirs = {**_DEFAULTS, **read_json(record, "pass --force to start this run over")}
            ours, recorded = _identity(mine), _identity(theirs)
            if recorded != ours:
                diff = sorted(k for k in ours if recorded.get(k) != ours[k])
                shown = "; ".join(
                    f"{k} {_brief(recorded.get(k))} there, {_brief(ours[k])} now" for k in diff[:3]
                )
                raise SagsaeError(
                    f"{self.dir} holds a run with a different config ({shown}{'; ...' if len(diff) > 3 else ''}): "
                    "pass the same settings to resume it, --force to overwrite it, or choose another --out"
                )
            return (self._load() if self.ckpt.exists() else None), (self.dir / SAE_WEIGHTS).exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.ckpt, self.dir / SAE_WEIGHTS, self.dir / HISTORY):
            stale.unlink(missing_ok=True)
        for snap in _snapshot_folders(self.dir / "checkpoints"):  # interrupted ones too
            shutil.rmtree(snap)
        atomic_write(record, lambda p: p.write_text(json.dumps(mine, indent=2)))
        return None, False

    def _load(self) -> dict:
        try:
            state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        except Exception as e:
            raise SagsaeError(f"checkpoint {self.ckpt} is unreadable ({e}): rerun with --force") from None
        if state["sae"]["W_enc"].shape != self.sae.W_enc.shape:
            raise SagsaeError(
                f"checkpoint {self.ckpt} has W_enc {tuple(state['sae']['W_enc'].shape)} but this run "
                f"needs {tuple(self.sae.W_enc.shape)} (a store with another d?): pass --force to start over"
            )
        return state

    def save_checkpoint(self) -> None:
        self.check_finite()
        if not self.world.main:
            return
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {"sae": self.sae.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "history": self.history, "coef": self.coef}  # fmt: skip
        atomic_write(self.ckpt, lambda p: torch_save(state, p))
        if self.history:
            frame = pd.DataFrame(self.history)
            atomic_write(self.dir / HISTORY, lambda p: frame.to_parquet(p, index=False))
        fault_point("checkpoint")

    def snapshot(self, norm_factor: float) -> None:
        """An SAE-only copy at this step (cfg.json + weights, loadable like a run) for convergence curves."""
        if self.world.main and self.step in self.cfg.snapshot_steps:
            self.check_finite()
            self._export(self.dir / "checkpoints" / snapshot_name(self.step * self.cfg.batch), norm_factor)

    def finish(self, norm_factor: float) -> None:
        self.check_finite()
        if self.world.main:
            self._export(self.dir, norm_factor)
        self.exported = True
        self.save_checkpoint()

    def _export(self, path: Path, norm_factor: float) -> None:
        """cfg.json + weights at ``path``: ``l1`` as train_cfg.json has it, and a target-L0 run's adapted
        coefficient now under ``l1_final``."""
        final = {"l1_final": self.coef} if self.cfg.target_l0 > 0 else {}
        self.sae.to("cpu").save(path, norm_factor=norm_factor, **final)
        self.sae.to(self.world.device)

    # --- one optimiser step -------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, autocast) -> dict:
        cfg, sae = self.cfg, self.sae
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * g["lr_mult"] * lr_factor(self.step, cfg)
        # this step's coefficient, passed into the loss (a target-L0 run's stays on the device: float64
        # product, then float32, as a Python float is cast when it meets the float32 loss terms)
        if self._coef_t is not None:
            coef = (self._coef_t * l1_factor(self.step, cfg)).float()
        else:
            coef = self._coef * l1_factor(self.step, cfg)
        n = x.shape[0]
        self.opt.zero_grad(set_to_none=False)
        if n:
            with autocast:
                out = sae(x, coef=coef)
            terms = {k: v.float() for k, v in out.losses.items()}
            loss = sum(terms.values())
            loss.backward()
            f, x_hat = out.f.detach(), out.x_hat.detach().float()
        else:  # an empty tail batch on this rank: contribute nothing, but join the collectives
            terms, loss = {}, torch.zeros((), device=x.device)
            f, x_hat = torch.zeros(0, cfg.width, device=x.device), x
            for p in sae.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        terms = {k: v.detach() for k, v in terms.items()}
        n_total, loss_total, fired_any, active, terms = self._reduce(n, loss.detach(), f, terms)
        self._watch_finite(loss_total, x if n else None)
        apply_update(sae, self.opt, cfg.clip)
        sae.update_fired(fired_any, n_total)
        if self.step < cfg.reset_until and self.step % cfg.reset_every == 0:
            residual = x.float() - x_hat if cfg.reset_mode == "residual" and n else None
            opening = (
                sae.opening_thresholds(x, active / cfg.width)
                if cfg.reset_mode == "quantile" and n and sae.resets
                else None
            )
            self._reset_dead(residual, opening)
        # float64, as the host division it replaces (n_total: a device tensor under torchrun)
        l0_global = active.double() / (n_total.clamp_min(1) if torch.is_tensor(n_total) else max(n_total, 1))
        if cfg.target_l0 > 0 and self.step >= int(cfg.steps * cfg.l1_warmup_frac):
            err = (
                l0_global.to(self._coef_t.device) - cfg.target_l0
            ) / cfg.target_l0  # on the device: no sync
            self._coef_t.mul_(torch.exp(L0_GAIN * err.clamp(-1.0, 1.0)))
        self.step += 1
        return {"loss": loss_total, "x_hat": x_hat, "f": f, "terms": terms, "l0": l0_global}

    # --- non-finite losses, found without a host sync per step --------------------------------
    def _watch_finite(self, loss: torch.Tensor, x: torch.Tensor | None) -> None:
        """Remember (on the device) the first step whose loss was not finite, its loss and whether its
        batch held NaN/inf; ``check_finite`` raises on it before anything is logged or saved."""
        bad = ~torch.isfinite(loss)
        bad_x = (
            ~torch.isfinite(x).all()
            if x is not None
            else torch.zeros((), dtype=torch.bool, device=bad.device)
        )
        if self._bad is None:
            self._bad = torch.full((3,), -1.0, dtype=torch.float64, device=bad.device)  # step, loss, bad x
        first = bad & (self._bad[0] < 0)
        step = torch.full((), float(self.step), dtype=torch.float64, device=bad.device)  # a fill, not a copy
        here = torch.stack([step, loss.to(torch.float64), bad_x.to(torch.float64)])
        self._bad.copy_(torch.where(first, here, self._bad))

    def check_finite(self) -> None:
        """Raise (one line) if a step since the start had a non-finite loss; the checkpoint on disk
        predates it, since every save checks first."""
        if self._bad is None or float(self._bad[0]) < 0:
            return
        step, loss, bad_x = self._bad.tolist()
        if bad_x > 0:
            raise SagsaeError(
                f"the store {self.cfg.store} holds NaN or inf activations (in the batch of step {int(step)}): "
                "harvest it again (with --model-dtype float32 if it was float16)"
            )
        kept = (
            f"the last good checkpoint (step {torch.load(self.ckpt, map_location='cpu', weights_only=False)['step']}) is kept in "
            f"{self.ckpt}; rerun with --force and a lower --lr"
            if self.ckpt.exists()
            else f"no checkpoint was written yet; rerun with --force and a lower --lr (now {self.cfg.lr:g})"
        )
        raise SagsaeError(f"run {self.cfg.run_id}: the loss is {loss} at step {int(step)}: {kept}")

    def _reduce(self, n: int, loss: torch.Tensor, f: torch.Tensor, terms: dict):
        """Global (rows, mean loss, fired flags, active count, mean terms): row-weighted gradients,
        losses, L0 counts and fired flags are summed over ranks in one all-reduce. Single process:
        everything stays on the device (0-d tensors; read back only when a row is logged)."""
        active = (f != 0).sum()  # int64: exact at any batch x width, as the host count it replaces
        if not self.world.active:
            return n, loss, fired(f), active, terms
        params = list(self.sae.parameters())
        dev = self.world.device
        zero = torch.zeros((), device=dev)
        scalars = torch.stack(
            [torch.full((), float(n), device=dev), loss.to(dev).float() * n, active.to(dev, torch.float32)]
            + [terms[k].to(dev).float() * n if k in terms else zero for k in self.sae.terms]
        )
        flat = torch.cat([p.grad.reshape(-1) * n for p in params] + [scalars, fired(f).float().to(dev)])
        all_reduce_sum(flat, self.world)
        i = 0
        sums = flat[sum(p.numel() for p in params) :]
        n_total = sums[0].round().long()  # stays on the device: no .item() per step
        rows = sums[0].clamp_min(1)
        for p in params:
            p.grad.copy_(flat[i : i + p.numel()].view_as(p) / rows)
            i += p.numel()
        mean = sums[: len(scalars)] / rows
        out_terms = {k: mean[3 + j] for j, k in enumerate(self.sae.terms) if k in terms or n == 0}
        return n_total, mean[1], sums[len(scalars) :] > 0, sums[2], out_terms

    @torch.no_grad()
    def _reset_dead(self, residual: torch.Tensor | None = None, opening: torch.Tensor | None = None) -> None:
        """Reset latents silent for the dead window (masked fills: no host sync, a no-op when none is),
        pointing them at this batch's residual under ``--reset-mode residual`` or reopening them at
        ``opening`` under ``quantile``; their Adam moments are cleared along each touched parameter's
        latent dimension."""
        mask = self.sae.dead_mask(self.cfg.dead_window)
        touched = self.sae.reset_latents(mask, residual, opening)
        params = dict(self.sae.named_parameters())
        for name, dim in touched.items():
            at = mask.view([-1 if i == dim else 1 for i in range(params[name].dim())])
            for moment in self.opt.state.get(params[name], {}).values():
                if torch.is_tensor(moment) and moment.shape == params[name].shape:
                    moment.masked_fill_(at, 0.0)

    def log(self, x: torch.Tensor, result: dict) -> dict:
        self.check_finite()
        f = result["f"]
        r2 = R2()
        r2.update(x.float(), result["x_hat"])
        row = {
            "step": self.step,
            "tokens": self.step * self.cfg.batch,
            "lr": self.opt.param_groups[0]["lr"],
            "coef": self.coef,
            "loss": float(result["loss"]),
            **{k: float(v) for k, v in result["terms"].items()},
            "l0": float(result["l0"]),
            "r2": r2.value(),
            "dead_frac": float(self.sae.dead_mask(self.cfg.dead_window).float().mean()),
            "neg_frac": float((f < 0).sum() / (f != 0).sum().clamp_min(1)),
        }
        if hasattr(self.sae, "log_threshold"):
            theta = self.sae.log_threshold.detach().exp()
            row |= {"theta_mean": float(theta.mean()), "theta_median": float(theta.median())}
        self.history.append(row)
        return row


SNAPSHOT_PREFIX = "tokens-"


def snapshot_name(tokens: int) -> str:
    return f"{SNAPSHOT_PREFIX}{tokens:013d}"


def _snapshot_folders(checkpoints: Path) -> list[Path]:
    """The folders of ``checkpoints`` named as snapshots are (tokens-<13 digits>); anything else a user
    keeps there (a backup copy, notes) is neither read nor removed."""
    import re

    name = re.compile(rf"{SNAPSHOT_PREFIX}\d{{13}}")
    return [p for p in checkpoints.glob(f"{SNAPSHOT_PREFIX}*") if name.fullmatch(p.name) and p.is_dir()]


def snapshot_dirs(run_dir: Path) -> list[Path]:
    """A run's snapshots (directories holding cfg.json + weights), in training order."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    done = (p for p in _snapshot_folders(d) if (p / SAE_WEIGHTS).exists() and (p / SAE_CFG).exists())
    return sorted(done)  # a snapshot whose write was interrupted (full disk) is left out


def snapshot_tokens(path: Path) -> int:
    return int(Path(path).name[len(SNAPSHOT_PREFIX) :])


class RunLocks:
    """Exclusive locks (flock on ``<run>/.lock``) on the run directories a process trains, so a
    second `sagsae train` on the same runs is refused instead of interleaving checkpoints."""

    def __init__(self):
        self.fds: list[int] = []

    def take(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fds.append(lock_dir(run_dir, "training"))

    def release(self) -> None:
        for fd in self.fds:
            unlock(fd)
        self.fds.clear()


# a setting added after a run was made is read as its default, so older runs still resume; a missing or 0
# dead window means the rule of its day (legacy_dead_window), read by _identity
_DEFAULTS = {**json.loads(json.dumps(asdict(TrainConfig()), default=str)), "dead_window": 0}


# settings that change what a run reports, not what it computes, and which settings were given as auto (the
# values they took are compared): a resume may change them
_BOOKKEEPING = ("log_every", "checkpoint_every", "auto")


def _brief(value, limit: int = 60) -> str:
    """A recorded setting as a refusal shows it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _identity(cfg: dict) -> dict:
    """What a resumed run must share with its record: the config without the bookkeeping settings,
    its store path resolved (`out/s` and `/abs/out/s` name the same store, from any working directory), and without the threshold
    lr multiple and the reset mode for variants that have no threshold (a Gated run trained beside
    SA-GSAE at 3x is the same run at 10x; `auto` gives each budget its own multiple; they are never reset)."""
    unused = () if has_thresholds(cfg.get("variant", "sa-gsae")) else ("threshold_lr_mult", "reset_mode")
    kept = {k: v for k, v in cfg.items() if k not in _BOOKKEEPING and k not in unused}
    if not kept.get("dead_window"):  # recorded before the window was resolved into the record
        kept["dead_window"] = legacy_dead_window(int(cfg["tokens"]), int(cfg["batch"]))
    # the store as resolved when the run was made (extra.store), not the path as typed: a relative path
    # read again from another working directory names another place
    recorded = (cfg.get("extra") or {}).get("store")
    return {**kept, "store": recorded or Location(cfg.get("store", "")).canonical()}


def train(
    cfgs: list[TrainConfig],
    out: str | Path,
    *,
    force: bool = False,
    quiet: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    wandb_project: str | None = None,
    allow_incomplete: bool = False,
) -> list[Path]:
    """Train every config (all must share store, tokens, batch and data seed) in one pass over the
    data: each batch is read once and fed to every unfinished run. Resumes from checkpoints.

    ``dtype``: ``bf16`` runs the forward under bfloat16 autocast (fp32 master weights and
    optimiser); ``auto`` picks bf16 on CUDA and fp32 elsewhere.
    """
    if not cfgs:
        raise SagsaeError("nothing to train")
    base = cfgs[0]
    for c in cfgs:
        c.validate()
        shared = ("store", "tokens", "batch", "data_seed", "data_shards")
        if any(getattr(c, k) != getattr(base, k) for k in shared):
            raise SagsaeError(
                "runs of one sweep must share --store, --tokens, --batch and the data seed/shards"
            )
    dev = pick_device(device)
    world = init_world(dev)
    shards = base.data_shards or world.size
    if world.active and shards != world.size:
        raise SagsaeError(f"--data-shards {shards} must equal the number of processes ({world.size}) or be 0")
    local = sorted({c.reset_mode for c in cfgs} - {"threshold"})
    if world.active and local:
        raise SagsaeError(
            f"--reset-mode {local[0]} runs in one process only (each process would reset latents from its "
            "own tokens): train without torchrun, or with --reset-mode threshold"
        )
    if base.batch % shards:
        raise SagsaeError(f"--batch {base.batch} must divide evenly into {shards} shards")
    dtype = {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)  # harvest's names work here too
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise SagsaeError(f"--dtype must be auto, fp32 or bf16 (got {dtype!r})")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    slow = sorted({c.variant for c in cfgs if ARCHITECTURES[resolve(c.variant)][0] == "sa-gsae"})
    if world.main and slow and base.steps < FEW_STEPS and not quiet:
        console.print(
            styled("yellow", "warning", ": ")
            + f"{base.steps:,} optimizer steps ({base.tokens:,} tokens / batch "
            f"{base.batch:,}) may stop {', '.join(slow)} before it converges (it needs more steps than the "
            f"Gated SAE; docs/METHOD.md §8): "
            + ("use --batch auto or a smaller --batch, or " if base.batch > MIN_BATCH else "")
            + "give it more --tokens (several epochs of the store are fine), and check with "
            "`sagsae eval --checkpoints`",
            highlight=False,
        )
    warn_of_busy_cores(dev, world, quiet)
    store = open_store(base.store)
    store.check_ready(allow_incomplete)
    if store.rows("train") == 0:
        raise SagsaeError(f"store {base.store} has no train rows: finish `sagsae harvest` first")
    if base.batch > store.rows("train"):
        raise SagsaeError(
            f"--batch {base.batch:,} exceeds the store's {store.rows('train'):,} train rows: "
            "choose a smaller --batch or harvest more tokens"
        )
    store.check_chunks()
    # on CUDA the rows travel in the store's dtype through page-locked staging buffers and are widened and
    # scaled on the device (DeviceFeed); on CPU the reader's thread does both, as before
    on_device = dev.type == "cuda"
    reader = ShuffledBatches(
        store, base.batch // shards, seed=base.data_seed, world_size=shards,
        rank=world.rank if world.active else None, widen=not on_device,
    )  # fmt: skip
    sample = store.read("train", 0, min(store.rows("train"), 65536), normalise=True)
    extra = {"store": Location(base.store).canonical(), "model_name": store.meta.get("model", ""),
             "hook_name": store.meta.get("hook_name") or store.meta.get("hook", ""), "norm_factor": store.norm_factor}  # fmt: skip
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SagsaeError(f"--out {out} is a file, not a directory: choose another --out")
    locks = RunLocks()
    try:
        runs = [
            Run(replace(c, extra={**extra, **c.extra}), store.d, out, sample, world, force, locks)
            for c in cfgs
        ]
        barrier(world)
        return _train_runs(runs, base, store, reader, world, dev, autocast, quiet, wandb_project)
    finally:
        locks.release()


def plan(runs: list[Run], base: TrainConfig) -> str:
    """One line on what a sweep is about to do: steps, batch, lr, and the threshold lr multiple and dead
    window of the runs they apply to (marked auto where derived from the budget)."""

    def shown(name: str, applies, fmt: str) -> str:
        values = sorted({(getattr(r.cfg, name), name in r.cfg.auto) for r in runs if applies(r.cfg.variant)})
        return ", ".join(fmt.format(v) + (" (auto)" if auto else "") for v, auto in values)

    line = (
        f"{len(runs)} run(s): {base.steps:,} steps of {base.batch:,} tokens ({base.tokens:,}), lr {base.lr:g}"
    )
    if mult := shown("threshold_lr_mult", has_thresholds, "{:.3g}x"):
        line += f"; threshold lr {mult}"
    if window := shown("dead_window", resets_latents, "{:,} silent tokens"):
        line += f"; dead-latent reset after {window}"
    return line


def _train_runs(runs, base, store, reader, world, dev, autocast, quiet, wandb_project) -> list[Path]:
    """The one pass over the data that feeds every unfinished run of a sweep."""
    todo = [r for r in runs if not r.done]
    if not todo:
        return [r.dir for r in runs]
    loggers = _wandb_runs(wandb_project, todo) if wandb_project and world.main else {}
    if world.main and not quiet:
        console.print(plan(todo, base), highlight=False)
    stop = _StopFlag()
    feed = None if reader.widen else DeviceFeed(dev, reader.scale)  # CUDA: staged copies, widened there
    start = min(r.step for r in todo)
    total = base.steps * base.batch
    with stop, progress_bar(f"train {len(todo)} run(s)", total=total, quiet=quiet or not world.main) as bar:
        bar.advance(start * base.batch)
        step, stopping = start, False
        while step < base.steps and not stopping:
            epoch, offset = divmod(step, len(reader))
            batches = reader.epoch(epoch, start_batch=offset)
            for x in feed(batches) if feed else batches:
                x = x.to(dev, non_blocking=True)  # a no-op after DeviceFeed
                for r in todo:
                    if r.step == step:
                        result = r.train_step(x, autocast)
                        if r.step % base.log_every == 0 or r.step == base.steps:
                            row = r.log(x, result)
                            if loggers:
                                loggers[r.cfg.run_id].log(row, step=r.step)
                            if r is todo[0]:
                                bar.note(
                                    f"L0 {row['l0']:.1f}  R² {row['r2']:.3f}  dead {row['dead_frac']:.2f}"
                                )
                        result = None  # this step's f and x_hat are freed before the next run's step
                        r.snapshot(store.norm_factor)
                        if r.step % base.checkpoint_every == 0:
                            r.save_checkpoint()
                step += 1
                bar.advance(base.batch)
                # ranks agree on a stop at log steps only (a collective read back on the host); one
                # process stops at the next step
                if not world.active or step % base.log_every == 0 or step >= base.steps:
                    stopping = all_agree(stop.requested, world)
                if step >= base.steps or stopping:
                    break
        for r in todo:
            if r.step >= base.steps:
                r.finish(store.norm_factor)
            else:
                r.save_checkpoint()
    for logger in loggers.values():
        logger.finish()
    barrier(world)
    if stopping:
        raise SagsaeError(
            f"stopped by signal at step {step}: checkpoints saved; rerun the same command to resume"
        )
    return [r.dir for r in runs]


def _wandb_runs(project: str, runs: list[Run]) -> dict:
    """One wandb run per SAE run (resumed under the same id), when wandb is installed."""
    try:
        import wandb
    except ImportError:
        raise SagsaeError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    return {
        r.cfg.run_id: wandb.init(
            project=project,
            name=r.cfg.run_id,
            id=r.cfg.run_id,
            resume="allow",
            config=asdict(r.cfg),
            dir=str(r.dir),
            reinit="create_new",
        )  # fmt: skip
        for r in runs
    }


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and exits cleanly at the next step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
