"""`sagsae train` and `sagsae ablate`: flags -> TrainConfig (sagsae_cli/recipe.py) -> one call."""

from __future__ import annotations

import math
import os
from typing import Optional

import typer
from rich.table import Table

from sagsae_cli.cli.app import (
    Batch,
    DeadWindow,
    Device,
    EvalTokens,
    Lr,
    Quiet,
    RunsOut,
    Seeds,
    StoreOpt,
    ThresholdLrMult,
    Tokens,
    TrainDtype,
    _auto,
    _dead_window,
    _floats,
    _ints,
    _tokens,
    _unique,
    app,
    with_settings,
)
from sagsae_cli.errors import require
from sagsae_cli.progress import console, styled
from sagsae_cli.registry import ALIASES as VARIANT_ALIASES
from sagsae_cli.registry import VARIANTS


@app.command()
@with_settings
def train(
    store: StoreOpt,
    out: RunsOut = "runs",
    variant: str = typer.Option(
        "sa-gsae", help=f"{', '.join(VARIANTS)}; comma-separated for several."
    ),  # fmt: skip
    width: Optional[int] = typer.Option(None, help="Dictionary width H (latents)."),
    expansion: Optional[float] = typer.Option(
        None, help="Width as a multiple of d (if --width is not given)."
    ),
    l1: str = typer.Option(
        "0.4", help="Sparsity coefficient(s) lambda, comma-separated (L0 coef. for jumprelu)."
    ),
    k: str = typer.Option("32", help="TopK: k value(s), comma-separated."),
    target_l0: str = typer.Option(
        "0", help="Adapt the coefficient to land at this L0 (comma-separated; 0 = off)."
    ),
    seeds: Seeds = "0",
    tokens: Tokens = "50M",
    batch: Batch = "auto",
    lr: Lr = "auto",
    threshold_lr_mult: ThresholdLrMult = "auto",
    warmup_steps: int = typer.Option(1000, help="Linear lr warm-up steps (at most 10% of the run)."),
    init_l0: float = typer.Option(
        0.0,
        help="Data-driven start: thresholds open at about this L0 on the first batch (0 = theta_0 for all).",
    ),
    init_decoder: str = typer.Option(
        "random", help="Decoder start: random unit rows, or data (unit-norm centred training rows)."
    ),
    l1_warmup: float = typer.Option(0.05, help="Fraction of the run over which lambda ramps up linearly."),
    lr_decay: float = typer.Option(
        0.2, help="Final fraction of the run over which the lr decays linearly to 0."
    ),
    adam_beta1: float = typer.Option(0.0, help="Adam beta1 (ours: 0, no momentum; docs/METHOD.md §8)."),
    snapshots: int = typer.Option(
        8, help="SAE-only snapshots at evenly spaced steps, for `sagsae eval --checkpoints` (0 = none)."
    ),
    dead_window: DeadWindow = "auto",
    reset_mode: str = typer.Option(
        "threshold",
        help="What a dead-latent reset does: threshold (our reconstruction's: theta_0, b_gate 0), residual (also "
        "point the latent at the batch's worst-reconstructed token) or quantile (keep its direction, reopen "
        "it on as many of the batch's tokens as the average latent fires on); docs/METHOD.md §4.",
    ),
    data_seed: int = typer.Option(0, help="Seed of the batch order (shared by the sweep)."),
    data_shards: int = typer.Option(
        0,
        help="Shards per global batch (0 = number of processes); set it "
        "to a torchrun run's process count to replay its batches on one device.",
    ),  # fmt: skip
    device: Device = "auto",
    dtype: TrainDtype = "auto",
    checkpoint_every: int = typer.Option(1000, help="Steps between checkpoints."),
    log_every: int = typer.Option(50, help="Steps between history rows."),
    wandb: Optional[str] = typer.Option(None, "--wandb", help="Also log history rows to this wandb project."),
    allow_incomplete: bool = typer.Option(
        False, help="Train on a store whose harvest has not finished (its norm factor is from partial data)."
    ),
    force: bool = typer.Option(False, help="Overwrite runs made with another config."),
    quiet: Quiet = False,
    settings: dict | None = None,
) -> None:
    """Train SAEs on a store: every (variant, coefficient, seed) is one run, all fed from one pass.

    Rerun the same command to resume unfinished runs; finished runs are skipped.
    """
    from sagsae_cli.recipe import TrainConfig, sweep_configs
    from sagsae_cli.store import open_store
    from sagsae_cli.train import train as run_training

    d = open_store(store).d
    require(expansion is None or (math.isfinite(expansion) and expansion > 0), "--expansion must be positive")
    if width is None:
        width = int(round((expansion or 8) * d))
    seed_list = _ints(seeds, "--seeds")
    require(bool(seed_list), "--seeds needs at least one seed")
    run_tokens, dead_tokens = _tokens(tokens), _dead_window(dead_window)
    batch, lr = _auto(batch, "--batch", int), _auto(lr, "--lr")
    base = TrainConfig(
        width=width, data_seed=data_seed, data_shards=data_shards, tokens=run_tokens, batch=batch, lr=lr,
        threshold_lr_mult=_auto(threshold_lr_mult, "--threshold-lr-mult"), warmup_steps=warmup_steps, init_l0=init_l0,
        settings=settings or {}, init_decoder=init_decoder, l1_warmup_frac=l1_warmup, decay_frac=lr_decay, adam_beta1=adam_beta1,
        snapshots=snapshots, dead_window=dead_tokens, reset_mode=reset_mode, checkpoint_every=checkpoint_every, log_every=log_every, store=store,
    )  # fmt: skip
    variants = [v.strip() for v in variant.split(",") if v.strip()]
    _unique([VARIANT_ALIASES.get(v, v) for v in variants], "--variant (after aliases)")
    cfgs = sweep_configs(
        base, variants, l1=_floats(l1, "--l1", lo=0), k=_ints(k, "--k", lo=1),
        target_l0=[t for t in _floats(target_l0, "--target-l0", lo=0) if t > 0], seeds=seed_list,
    )  # fmt: skip
    dirs = run_training(cfgs, out, force=force, quiet=quiet, device=device, dtype=dtype, wandb_project=wandb,
                        allow_incomplete=allow_incomplete)  # fmt: skip
    if os.environ.get("RANK", "0") == "0":
        console.print(styled("green", "done", f": {len(dirs)} run(s) in {out}"))
        for path in dirs:
            console.print(f"  {path}")


@app.command()
@with_settings
def ablate(
    store: StoreOpt,
    width: int = typer.Option(..., help="Width H (gated also runs at 2H)."),
    l1: float = typer.Option(0.4, help="Sparsity coefficient for every variant."),
    target_l0: float = typer.Option(0.0, help="Adapt each run's coefficient to this L0 instead (0 = off)."),
    seeds: Seeds = "0",
    tokens: Tokens = "50M",
    batch: Batch = "auto",
    lr: Lr = "auto",
    threshold_lr_mult: ThresholdLrMult = "auto",
    dead_window: DeadWindow = "auto",
    out: RunsOut = "runs",
    results: str = typer.Option("results", help="Results directory."),
    eval_tokens: EvalTokens = "100k",
    device: Device = "auto",
    dtype: TrainDtype = "auto",
    force: bool = typer.Option(False, help="Retrain and re-evaluate."),
    quiet: Quiet = False,
    settings: dict | None = None,
) -> None:
    """The ablation grid, trained in one pass, evaluated and tabulated against the tied default.

    Variants: tied, untied, no-aux, one-sided, no-reset, gated at H and gated at 2H.
    """
    from sagsae_cli.ablate import ablate as run_ablate
    from sagsae_cli.recipe import TrainConfig

    eval_tokens = _tokens(eval_tokens, "--eval-tokens")
    run_tokens = _tokens(tokens)
    base = TrainConfig(width=width, l1=l1, target_l0=target_l0, tokens=run_tokens, batch=_auto(batch, "--batch", int),
                       lr=_auto(lr, "--lr"), threshold_lr_mult=_auto(threshold_lr_mult, "--threshold-lr-mult"), store=store, settings=settings or {},
                       dead_window=_dead_window(dead_window))  # fmt: skip
    seed_list = _ints(seeds, "--seeds")
    table = run_ablate(
        base, seed_list, out, results, eval_tokens, force=force, quiet=quiet, device=device, dtype=dtype
    )
    agg = (
        table.groupby("label")[["r2", "l0", "dead_frac", "delta_r2"]]
        .mean()
        .sort_values("r2", ascending=False)
    )
    t = Table(title=f"ablations at width {width} (seed means; delta vs sa-gsae@{width})")
    for c in ("variant", "R²", "L0", "dead", "ΔR²"):
        t.add_column(c, justify="left" if c == "variant" else "right")
    for label, r in agg.iterrows():
        t.add_row(label, f"{r.r2:.4f}", f"{r.l0:.2f}", f"{r.dead_frac:.3f}", f"{r.delta_r2:+.4f}")
    console.print(t)
