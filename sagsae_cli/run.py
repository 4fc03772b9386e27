"""One SAE being trained (``Run``): its model, Adam (betas 0, 0.999), the constrained update (unit-norm
decoder, gradient clip), the target-L0 controller, dead-latent resets, the non-finite watch, atomic
checkpoints, snapshots, and the start-or-resume decision against its recorded config (``_identity``).
No step reads a value back to the host (tests/test_host_syncs.py); under torchrun gradients, losses
and fired flags are summed across ranks, weighted by rows (docs/METHOD.md §4).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from sagsae_cli.distributed import World, all_reduce_sum, on_main
from sagsae_cli.errors import SagsaeError
from sagsae_cli.faults import fault_point
from sagsae_cli.files import (
    HISTORY,
    SAE_WEIGHTS,
    TRAIN_CFG,
    _snapshot_folders,
    atomic_write,
    read_json,
    snapshot_name,
    torch_save,
)
from sagsae_cli.location import Location
from sagsae_cli.metrics import R2, fired
from sagsae_cli.recipe import TrainConfig, l1_factor, legacy_dead_window, lr_factor
from sagsae_cli.registry import has_thresholds, settings_of
from sagsae_cli.sae import SAE, SAEConfig, build_sae


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
        locks=None,  # train.RunLocks: takes the run directory's lock
    ):  # fmt: skip
        self.cfg, self.dir, self.world = cfg, out / cfg.run_id, world
        if world.main and locks is not None:
            locks.take(self.dir)
        sae_cfg = SAEConfig(architecture="", d_in=d_in, d_sae=cfg.width, l1=cfg.l1, k=cfg.k,
                            dead_tokens=cfg.dead_window, settings=dict(cfg.settings), extra=dict(cfg.extra))  # fmt: skip
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
        mine["settings"] = settings_of(self.cfg.variant, self.cfg.settings)  # its own, resolved
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


# a setting added after a run was made is read as its default, so older runs still resume; a missing or 0
# dead window means the rule of its day (legacy_dead_window), read by _identity
_DEFAULTS = {**json.loads(json.dumps(asdict(TrainConfig()), default=str)), "dead_window": 0}


# the architecture settings a train_cfg.json of 0.2.0 and before kept at the top level (read by _identity)
LEGACY_SETTINGS = ("theta0", "aux_coef")

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
    variant = cfg.get("variant", "sa-gsae")
    unused = () if has_thresholds(variant) else ("threshold_lr_mult", "reset_mode")
    kept = {
        k: v for k, v in cfg.items() if k not in _BOOKKEEPING and k not in unused and k not in LEGACY_SETTINGS
    }
    # the variant's own settings only (a setting of another architecture never makes a run differ); a
    # train_cfg.json of 0.2.0 kept theta0 and aux_coef at the top level
    given = {**{k: cfg[k] for k in LEGACY_SETTINGS if k in cfg}, **(cfg.get("settings") or {})}
    kept.pop("settings", None)
    kept.update(settings_of(variant, given))  # each by its own name, as a refusal names it
    if not kept.get("dead_window"):  # recorded before the window was resolved into the record
        kept["dead_window"] = legacy_dead_window(int(cfg["tokens"]), int(cfg["batch"]))
    # the store as resolved when the run was made (extra.store), not the path as typed: a relative path
    # read again from another working directory names another place
    recorded = (cfg.get("extra") or {}).get("store")
    return {**kept, "store": recorded or Location(cfg.get("store", "")).canonical()}
