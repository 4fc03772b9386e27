"""The `sagsae` command line: flags -> config -> one call per stage. Errors become one line, exit 2."""

from __future__ import annotations

import errno
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sagsae_cli import __version__
from sagsae_cli.errors import PeerError, SagsaeError, disk_space
from sagsae_cli.progress import console, styled
from sagsae_cli.variants import ALIASES as VARIANT_ALIASES
from sagsae_cli.variants import ARCHITECTURES

app = typer.Typer(
    help="Sign-Aware Gated SAEs (arXiv 2605.28149): harvest -> train -> eval -> plot, through files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Inspect, import and export activation stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


# Options several commands share, declared once: the same flag means the same thing everywhere.
StoreOpt = Annotated[str, typer.Option("--store", "-s", help="Activation store (from `sagsae harvest`): a directory or an fsspec URL (s3://…).")]  # fmt: skip
RunsOut = Annotated[str, typer.Option("--out", "-o", help="Directory of run directories.")]
Seeds = Annotated[str, typer.Option(help="Model seeds, comma-separated.")]
Tokens = Annotated[str, typer.Option(help="Training tokens per run (50M, 200k, 1e6 ...).")]
Batch = Annotated[str, typer.Option(help="Tokens per batch; auto: about 8,000 steps for --tokens (a power of two in 128-4096).")]  # fmt: skip
Lr = Annotated[str, typer.Option(help="Base learning rate (auto: 2e-3); log thresholds learn at --threshold-lr-mult x it.")]  # fmt: skip
ThresholdLrMult = Annotated[str, typer.Option(help="Learning-rate multiple for log thresholds; auto: 100 / (steps x lr) within 1-10 (ours: 10, our reconstruction's multiple, up to 5,000 steps at lr 2e-3; 3.2 at 2M tokens with the auto batch and lr; docs/METHOD.md §8).")]  # fmt: skip
DeadWindow = Annotated[str, typer.Option(help="Tokens of silence before a latent is reset; auto (or 0): 1.25% of the run within [25k, 10% of the run], at most 10M; variants that reset nothing: 10% (ours; docs/METHOD.md §8).")]  # fmt: skip
AllowMismatch = Annotated[bool, typer.Option(help="Use an SAE made elsewhere although the model or hook it records differs from the store's (d must still match).")]  # fmt: skip
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
TrainDtype = Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, else fp32), fp32 or bf16.")]
EvalTokens = Annotated[str, typer.Option(help="Held-out tokens per run (the same for every run).")]
Quiet = Annotated[bool, typer.Option(help="No progress bar.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sagsae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


SYNTH = "Synthetic ground truth (--source synthetic; docs/METHOD.md §7)"


@app.command()
def harvest(
    model: str = typer.Option(
        "smollm2-135m",
        help="Hub id, alias (smollm2-135m and gemma3-270m from their packages; pythia-1b, smollm3-3b, gpt2, ...), "
        "local dir or .gguf.",
    ),
    out: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Store directory or fsspec URL (s3://bucket/path; one sub-directory per hook if several).",
    ),
    hook: str = typer.Option(
        "resid_mid",
        help="resid_pre, resid_mid, resid_post, attn_out, mlp_out or "
        "blocks.L.hook_NAME; comma-separated for several stores in one pass.",
    ),  # fmt: skip
    layer: Optional[int] = typer.Option(None, help="Layer (default: mid-depth, n_layers // 2)."),
    revision: Optional[str] = typer.Option(None, help="Model revision (hub)."),
    dataset: str = typer.Option(
        "shakespeare", help="shakespeare, a local .txt/.jsonl/.parquet file or folder, or a hub dataset."
    ),
    dataset_split: str = typer.Option("train", help="Hub dataset split."),
    text_column: str = typer.Option("text", help="Text column (.jsonl, .parquet, hub)."),
    context: int = typer.Option(128, help="Tokens per window (BOS included)."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    keep_bos: bool = typer.Option(False, help="Keep position 0 (BOS / attention sink; excluded by default)."),
    max_norm_ratio: float = typer.Option(
        10.0, help="Drop tokens whose norm exceeds this x the median (0 = keep all)."
    ),
    model_dtype: str = typer.Option(
        "auto", help="Model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    tokens: str = typer.Option("1M", help="Train-split tokens (1M, 200k, 1e6 ...)."),
    eval_tokens: str = typer.Option(
        "100k", help="Eval-split tokens (from documents train never sees; 0 = none)."
    ),
    dtype: str = typer.Option(
        "auto",
        help="Store dtype: auto (bfloat16 for a model, float32 for synthetic data), float32, float16 or bfloat16.",
    ),
    source: str = typer.Option(
        "lm",
        help="lm (a language model) or synthetic (docs/METHOD.md §7 ground truth).",
        rich_help_panel=SYNTH,
    ),
    protocol: str = typer.Option(
        "A", help="Synthetic: protocol A (rho sweep), B (pair fraction), C (widths).", rich_help_panel=SYNTH
    ),
    d: int = typer.Option(64, help="Synthetic: dimension.", rich_help_panel=SYNTH),
    n_axes: int = typer.Option(48, help="Synthetic: number of unit axes K.", rich_help_panel=SYNTH),
    rho: Optional[float] = typer.Option(
        None,
        help="Synthetic: within-pair co-firing lift minus one, in [-1, 0] (-1: a pair's two sides never "
        "fire together; not a correlation: the indicators' correlation is rho p / (1 - p)).",
        rich_help_panel=SYNTH,
    ),
    paired_fraction: Optional[float] = typer.Option(
        None, help="Synthetic: fraction of paired axes.", rich_help_panel=SYNTH
    ),
    l0: float = typer.Option(2.0, help="Synthetic: mean active features per token.", rich_help_panel=SYNTH),
    noise: float = typer.Option(
        0.01, help="Synthetic: Gaussian noise std per dimension.", rich_help_panel=SYNTH
    ),
    seed: int = typer.Option(0, help="Synthetic: random seed.", rich_help_panel=SYNTH),
    force: bool = typer.Option(False, help="Delete an existing store made by another config and start over."),
    quiet: Quiet = False,
) -> None:
    """Write one hookpoint's activations (or synthetic ground truth) to a Zarr activation store.

    Resumable: rerun the same command after an interruption and it continues from the last commit.
    """
    tokens, eval_tokens = _tokens(tokens), _tokens(eval_tokens, "--eval-tokens", lo=0)
    _check_norm_ratio(max_norm_ratio)
    _check(context >= 2 and batch_size >= 1, "--context must be >= 2 and --batch-size >= 1")
    from sagsae_cli.store import DTYPE_ALIASES

    if dtype == "auto":  # docs/METHOD.md §8: bf16 halves an LM store at no measurable cost in R²
        dtype = "float32" if source == "synthetic" else "bfloat16"
    dtype = DTYPE_ALIASES.get(dtype, dtype)  # the model dtype is resolved (aliases too) in harvest()
    if source == "synthetic":
        from sagsae_cli.synthetic import PROTOCOLS, SyntheticConfig, write_synthetic_store

        preset = PROTOCOLS.get(protocol.upper(), {})
        cfg = SyntheticConfig(
            protocol=protocol.upper(), d=d, n_axes=n_axes,
            rho=preset.get("rho", -1.0) if rho is None else rho,
            paired_fraction=preset.get("paired_fraction", 1.0) if paired_fraction is None else paired_fraction,
            l0=l0, noise=noise, tokens=tokens, eval_tokens=eval_tokens, seed=seed, dtype=dtype,
        )  # fmt: skip
        rows = write_synthetic_store(cfg, out, force=force, quiet=quiet)
        _print_info(out)
        console.print(
            styled("green", "done", f": {rows['train']:,} train + {rows['eval']:,} eval rows in {out}")
        )
    elif source == "lm":
        from sagsae_cli.harvest import HarvestConfig
        from sagsae_cli.harvest import harvest as run_harvest

        cfg = HarvestConfig(
            model=model, revision=revision, hooks=tuple(h.strip() for h in hook.split(",") if h.strip()),
            layer=layer, dataset=dataset, dataset_split=dataset_split, text_column=text_column, context=context,
            tokens=tokens, eval_tokens=eval_tokens, batch_size=batch_size, keep_bos=keep_bos,
            max_norm_ratio=max_norm_ratio, dtype=dtype, model_dtype=model_dtype, device=device,
        )  # fmt: skip
        for path in run_harvest(cfg, out, force=force, quiet=quiet).values():
            _print_info(str(path))
            _print_summary(str(path))
    else:
        raise SagsaeError(f"unknown --source {source!r}: use lm or synthetic")


def _print_summary(path: str) -> None:
    from sagsae_cli.store import open_store

    s = open_store(path)
    c = s.commit_state["cursor"]
    seen = c.get("train_seen", 0) + c.get("eval_seen", 0)
    dropped = c.get("train_dropped", 0) + c.get("eval_dropped", 0)
    share = dropped / seen if seen else 0.0
    console.print(
        styled(
            "green",
            "done",
            f" {path}: {s.rows('train'):,} train + {s.rows('eval'):,} eval tokens, "
            f"{s.disk_bytes() / 2**20:,.1f} MiB, norm factor {s.norm_factor:.4g}; "
            f"{dropped:,} of {seen:,} tokens ({share:.3%}) exceeded {s.meta.get('max_norm_ratio')}x the median norm "
            "and were dropped",
        )
    )


def _floats(text: str, flag: str, lo: float | None = None, what: str = "a finite number") -> list[float]:
    """Comma-separated finite numbers, each >= ``lo`` when given, none given twice."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SagsaeError(f"{flag} takes comma-separated numbers (got {text!r})") from None
    bound = "finite" if lo is None else f"{what} >= {lo:g}"
    for v in values:
        _check(math.isfinite(v) and (lo is None or v >= lo), f"{flag} must be {bound} (got {v:g})")
    _unique(values, flag)
    return values


def _unique(values: list, flag: str) -> None:
    """A list option names each value once: a duplicate would be the same run twice."""
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    _check(not twice, f"{flag} names {', '.join(twice)} more than once: give each value once")


SEED_MAX = 2**63 - 1  # torch.manual_seed takes an int64


def _ints(text: str, flag: str, lo: int = 0, hi: int = SEED_MAX) -> list[int]:
    """Comma-separated whole numbers in [``lo``, ``hi``] (seeds, k), read exactly (no float rounding)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = _floats(text, flag, lo, what="a whole number")
        _check(all(v == int(v) for v in values), f"{flag} takes whole numbers (got {text!r})")
        values = [int(v) for v in values]
    for v in values:
        _check(lo <= v <= hi, f"{flag} must be a whole number between {lo} and {hi} (got {v})")
    _unique(values, flag)
    return values


def _tokens(text: str | int, flag: str = "--tokens", lo: int = 1) -> int:
    """A token count: 50M, 2.5k, 1e6 or 4096 (at least ``lo``)."""
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise SagsaeError(f"{flag} takes a count such as 50M, 200k or 1e6 (got {text!r})") from None
    _check(
        math.isfinite(value) and lo <= value < 1e15, f"{flag} must lie between {lo:,} and 1e15 (got {text!r})"
    )
    return int(value)


def _batch_lr(tokens: int, batch: str, lr: str) -> tuple[int, float]:
    """--batch and --lr: numbers, or `auto` (budget-aware: train.auto_batch and train.AUTO_LR)."""
    from sagsae_cli.train import resolve_batch_lr

    try:
        b, r = resolve_batch_lr(tokens, batch, lr)
    except ValueError:
        raise SagsaeError(f"--batch and --lr take a number or auto (got {batch!r}, {lr!r})") from None
    _check(b >= 1, f"--batch must be >= 1 (got {batch})")
    _check(math.isfinite(r) and r > 0, f"--lr must be positive (got {lr})")
    return b, r


def _threshold_lr_mult(value: str) -> float:
    """--threshold-lr-mult: a positive number, or auto (0.0: TrainConfig resolves it from the lr)."""
    if value.strip().lower() == "auto":
        return 0.0
    try:
        mult = float(value)
    except ValueError:
        mult = float("nan")
    _check(
        math.isfinite(mult) and mult > 0,
        f"--threshold-lr-mult takes a positive number or auto (got {value!r})",
    )
    return mult


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SagsaeError(message)


def _dead_window(text: str) -> int:
    """--dead-window: a token count, or auto (0: the rule of train.default_dead_window)."""
    return 0 if str(text).strip().lower() == "auto" else _tokens(text, "--dead-window", lo=0)


def _check_norm_ratio(ratio: float) -> None:
    """harvest's and import's --max-norm-ratio: 0 keeps every row; below 1 would drop the median row."""
    _check(
        math.isfinite(ratio) and (ratio == 0 or ratio >= 1),
        f"--max-norm-ratio must be 0 (keep every row) or at least 1 (got {ratio:g}): below 1 it drops most "
        "rows, the median row among them",
    )


@app.command()
def train(
    store: StoreOpt,
    out: RunsOut = "runs",
    variant: str = typer.Option(
        "sa-gsae", help=f"{', '.join(ARCHITECTURES)}; comma-separated for several."
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
    theta0: float = typer.Option(1e-3, help="Initial threshold theta_0 (normalised units)."),
    aux_coef: float = typer.Option(
        1.0, help="Weight alpha of the gated / sa-gsae auxiliary reconstruction term (no-aux: 0)."
    ),
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
) -> None:
    """Train SAEs on a store: every (variant, coefficient, seed) is one run, all fed from one pass.

    Rerun the same command to resume unfinished runs; finished runs are skipped.
    """
    from sagsae_cli.ablate import sweep_configs
    from sagsae_cli.store import open_store
    from sagsae_cli.train import TrainConfig
    from sagsae_cli.train import train as run_training

    d = open_store(store).d
    _check(expansion is None or (math.isfinite(expansion) and expansion > 0), "--expansion must be positive")
    if width is None:
        width = int(round((expansion or 8) * d))
    seed_list = _ints(seeds, "--seeds")
    _check(bool(seed_list), "--seeds needs at least one seed")
    for flag, value in (
        ("--checkpoint-every", checkpoint_every),
        ("--log-every", log_every),
    ):
        _check(value >= 1, f"{flag} must be >= 1 (got {value})")
    _check(data_shards >= 0, f"--data-shards must be >= 0 (got {data_shards})")
    _check(snapshots >= 0 and warmup_steps >= 0, "--snapshots and --warmup-steps must be >= 0")
    for flag, value in (("--l1-warmup", l1_warmup), ("--lr-decay", lr_decay)):
        _check(0 <= value <= 1, f"{flag} is a fraction of the run in [0, 1] (got {value:g})")
    _check(theta0 > 0 and init_l0 >= 0, "--theta0 must be positive, --init-l0 >= 0")
    _check(
        math.isfinite(aux_coef) and aux_coef >= 0,
        f"--aux-coef must be a finite number >= 0 (got {aux_coef:g})",
    )
    run_tokens, dead_tokens = _tokens(tokens), _dead_window(dead_window)
    batch, lr = _batch_lr(run_tokens, batch, lr)
    base = TrainConfig(
        width=width, data_seed=data_seed, data_shards=data_shards, tokens=run_tokens, batch=batch, lr=lr,
        threshold_lr_mult=_threshold_lr_mult(threshold_lr_mult), warmup_steps=warmup_steps, theta0=theta0, init_l0=init_l0,
        aux_coef=aux_coef, init_decoder=init_decoder, l1_warmup_frac=l1_warmup, decay_frac=lr_decay, adam_beta1=adam_beta1,
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


@app.command("eval")
def eval_cmd(
    runs: list[str] = typer.Argument(
        ...,
        help="Run directories (shell globs welcome: runs/*), or SAE directories made by SAELens, sparsify or "
        "dictionary_learning (with --store).",
    ),
    store: Optional[str] = typer.Option(
        None, help="Store to evaluate SAEs made elsewhere on (they act on its raw activations)."
    ),
    allow_mismatch: AllowMismatch = False,
    results: str = typer.Option("results", help="Results directory (Parquet tables)."),
    eval_tokens: EvalTokens = "100k",
    bipolar_threshold: float = typer.Option(0.1, help="Minority share at which a latent counts as bipolar."),
    lr_windows: int = typer.Option(16, help="Held-out windows for loss recovered on LM stores (0 = skip)."),
    model: Optional[str] = typer.Option(None, help="Model for loss recovered (default: the store's)."),
    checkpoints: bool = typer.Option(
        False,
        help="Also evaluate every snapshot a run kept (unfinished runs too) into <results>/checkpoints.",
    ),
    force: bool = typer.Option(False, help="Re-evaluate runs already in the table."),
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Held-out metrics of trained runs (or SAEs made elsewhere) into <results>/eval/<run>.parquet.

    R², MSE, L0 (f != 0), dead fraction, parameters, the bipolar census and the opposed-pairs census on the store's eval split; loss recovered on LM stores; axis recovery and latents per axis on synthetic stores.
    """
    from sagsae_cli.evaluate import evaluate

    eval_tokens = _tokens(eval_tokens, "--eval-tokens")
    _check(
        0 <= bipolar_threshold <= 0.5,
        f"--bipolar-threshold is a minority share in [0, 0.5] (got {bipolar_threshold:g})",
    )
    _check(lr_windows >= 0, f"--lr-windows must be >= 0 (got {lr_windows})")
    frame = evaluate(runs, results, eval_tokens=eval_tokens, force=force, bipolar_threshold=bipolar_threshold,
                     lr_windows=lr_windows, model=model, quiet=quiet, checkpoints=checkpoints,
                     device=device, store=store, allow_mismatch=allow_mismatch)  # fmt: skip
    if frame.empty:
        console.print(f"no run has finished yet: snapshots evaluated into {results}/checkpoints/")
        return
    cols = ["run", "params", "r2", "l0", "dead_frac", "bipolar_frac", "opposed_pair_share", "loss_recovered",
            "axis_recovery", "latents_per_axis"]  # fmt: skip
    cols = [c for c in cols if c in frame]
    table = Table(title=f"evaluation ({eval_tokens:,} held-out tokens per run)")
    for c in cols:
        table.add_column(c, justify="left" if c == "run" else "right")
    frame = frame.assign(run=[f"{h}/{r}" if h else r for h, r in zip(frame.hook, frame.run)])  # hook too
    for _, row in frame.sort_values(["hook", "variant", "width", "l1", "k", "seed"]).iterrows():
        table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else f"{row[c]}" for c in cols])
    console.print(table)
    console.print(f"table: {results}/eval/")


@app.command()
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
) -> None:
    """The ablation grid, trained in one pass, evaluated and tabulated against the tied default.

    Variants: tied, untied, no-aux, one-sided, no-reset, gated at H and gated at 2H.
    """
    from sagsae_cli.ablate import ablate as run_ablate
    from sagsae_cli.train import TrainConfig

    _check(width >= 1, "--width must be positive")
    _check(
        math.isfinite(l1) and math.isfinite(target_l0) and l1 >= 0 and target_l0 >= 0,
        f"--l1 and --target-l0 must be finite numbers >= 0 (got {l1:g}, {target_l0:g})",
    )
    eval_tokens = _tokens(eval_tokens, "--eval-tokens")
    run_tokens = _tokens(tokens)
    batch, lr = _batch_lr(run_tokens, batch, lr)
    base = TrainConfig(width=width, l1=l1, target_l0=target_l0, tokens=run_tokens, batch=batch, lr=lr,
                       threshold_lr_mult=_threshold_lr_mult(threshold_lr_mult), store=store,
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


@app.command()
def pairs(
    sae: str = typer.Argument(
        ..., help="A run directory, or an SAE directory made by SAELens, sparsify or dictionary_learning."
    ),
    store: Optional[str] = typer.Option(
        None, help="Store to read (default: a run's own; needed for SAEs made elsewhere)."
    ),
    out: str = typer.Option(..., "--out", "-o", help="Parquet file for the pairs table."),
    cos: float = typer.Option(
        0.9, help="tau: decoder rows with cosine <= -tau are a candidate pair (0 < tau <= 1)."
    ),
    max_cofire: float = typer.Option(
        0.05,
        help="A pair is opposed when both latents co-fire on at most this share of the rarer one's firings.",
    ),
    eval_tokens: EvalTokens = "100k",
    allow_mismatch: AllowMismatch = False,
    force: bool = typer.Option(False, help="Replace an existing --out."),
    device: Device = "auto",
) -> None:
    """Opposed pairs in a one-signed SAE: latents whose decoder rows point nearly opposite ways and rarely fire together.

    The capacity sign-awareness would save: per pair the cosine, both firing frequencies and the co-firing rate; per SAE the count and the share of live latents they occupy (an SA-GSAE holds both signs in one latent: its bipolar share is printed beside).
    """
    from sagsae_cli.pairs import pairs as find_pairs
    from sagsae_cli.pairs import write

    _check(0 < cos <= 1, f"--cos is tau in (0, 1] (got {cos:g})")
    _check(0 <= max_cofire <= 1, f"--max-cofire is a share in [0, 1] (got {max_cofire:g})")
    table, summary = find_pairs(sae, store, tau=cos, max_cofire=max_cofire, eval_tokens=_tokens(eval_tokens, "--eval-tokens"),
                                allow_mismatch=allow_mismatch, device=device)  # fmt: skip
    path = write(table, out, force=force)
    console.print(
        f"{summary['opposed_pairs']:,} opposed pairs (cosine <= -{cos:g}, co-firing <= {max_cofire:g}) among "
        f"{summary['candidates']:,} candidates: {summary['opposed_pair_share']:.1%} of {summary['live']:,} live latents "
        f"(width {summary['width']:,}); bipolar latents: {summary['bipolar_frac']:.1%} of live; {summary['tokens']:,} "
        f"held-out tokens; saved {path}"
    )


@app.command()
def compare(
    results: str = typer.Option("results", help="Results directory holding the eval table."),
    matched_l0: Optional[float] = typer.Option(
        None,
        help="L0 at which dead fractions are compared (default: the middle of each cell's own L0 overlap).",
    ),
    a: str = typer.Option("sa-gsae", help="Variant at width H (SA-half)."),
    b: str = typer.Option("gated", help="Variant at width 2H (Gated-full), or at --width-ratio x H."),
    width_ratio: int = typer.Option(
        2, help="B's width as a multiple of A's: 2 (the paper's), 1 (equal widths)."
    ),
) -> None:
    """The paper's criteria per cell (A at width H against B at 2H), saved to <results>/compare/.

    On seed means and on each seed alone: strict dominance over the shared L0 range (and the L0 where it fails), the worst R² gap against the paper's 0.025 band and its -0.008, the absolute dead-fraction cut at a matched L0 and the sweep-geomean dead ratio, with the paper's figure for the hookpoint beside ours. compare.parquet (seed means) and compare_seeds.parquet (per seed) load in a notebook.
    """
    from pathlib import Path

    from sagsae_cli.compare import (
        PAIR_KEYS,
        convergence,
        gap_by_tokens,
        ratio_label,
        seed_rows,
        write_compare,
    )
    from sagsae_cli.compare import compare as run_compare
    from sagsae_cli.evaluate import read_table

    _check(
        matched_l0 is None or (math.isfinite(matched_l0) and matched_l0 > 0),
        f"--matched-l0 must be positive (got {matched_l0})",
    )
    _check(width_ratio >= 1, f"--width-ratio must be a whole number >= 1 (got {width_ratio})")
    # every input is read and every table computed before anything is written or printed
    table = read_table(results)
    frame = run_compare(table, matched_l0=matched_l0, a=a, b=b, ratio=width_ratio)
    seeds = seed_rows(table, matched_l0=matched_l0, a=a, b=b, ratio=width_ratio)
    conv = gaps = None
    if any((Path(results) / "checkpoints").glob("*.parquet")):
        snaps = read_table(results, "checkpoints")
        conv = convergence(snaps, table)
        try:
            gaps = gap_by_tokens(snaps, table, matched_l0=matched_l0, a=a, b=b, ratio=width_ratio)
        except SagsaeError:
            gaps = None
    path = write_compare(frame, results, keep=PAIR_KEYS)
    write_compare(seeds, results, "compare_seeds", keep=[*PAIR_KEYS, "seed"])
    if conv is not None:
        write_compare(conv, results, "convergence")
    if gaps is not None:
        write_compare(gaps, results, "gap_by_tokens", keep=PAIR_KEYS)
    _print_compare(frame, a, b, width_ratio, ratio_label)
    console.print(f"saved {path} and compare_seeds.parquet beside it")
    if conv is not None:
        _print_convergence(conv, gaps)


def _print_compare(frame, a: str, b: str, ratio: int, ratio_label) -> None:
    """The paper's criteria per cell: ours (seed means, and whether each holds in every seed) and the paper's."""
    import pandas as pd

    table = Table(
        title=f"{a} at H against {b} at {ratio_label(ratio)}: the paper's criteria (R² vs L0, seed means)"
    )
    heads = ["cell", "A vs B", "seeds", "L0 overlap", "dominates (every seed)", "fails at L0", "worst gap (worst seed)",
             "within 0.025 (every seed)", "matched L0", "dead cut (min seed)", "dead ratio (min seed)", "verdict"]  # fmt: skip
    for h in heads:
        table.add_column(h, justify="left" if h in ("cell", "A vs B", "verdict") else "right")
    num = lambda v, f: format(v, f) if pd.notna(v) else "n/a"
    for _, r in frame.iterrows():
        overlap = f"{r.overlap_lo:.3g}-{r.overlap_hi:.3g}" if r.overlap else "none"
        table.add_row(f"{r.model} {r.hook}", f"{r.a} vs {r.b}", str(r.seeds), overlap,
                      f"{_yes(r.dominates)} ({_yes(r.dominates_every_seed)})",
                      "—" if r.dominates else num(r.fail_l0, ".3g"),
                      f"{num(r.worst_gap, '+.4f')} ({num(r.worst_gap_seed_min, '+.4f')})",
                      f"{_yes(r.within_band)} ({_yes(r.within_band_every_seed)})", num(r.matched_l0, ".3g"),
                      f"{num(r.dead_cut_at_l0, '+.3f')} ({num(r.dead_cut_seed_min, '+.3f')})",
                      f"{num(r.dead_ratio_geomean, '.3g')}x ({num(r.dead_ratio_seed_min, '.3g')}x)",
                      r.paper_verdict + ("" if r.verdict_every_seed else " (not in every seed)"))  # fmt: skip
    console.print(table)
    for _, r in frame.iterrows():
        if pd.notna(r.get("b_opposed_pair_share", float("nan"))):
            console.print(
                f"{r.model} {r.hook}: {r.b} spends {r.b_opposed_pair_share:.1%} of its live latents on opposed pairs; "
                f"{r.a} holds both signs in {r.a_bipolar_frac:.1%} of its live latents (sweep means)",
                markup=False,
            )
    for _, r in frame.iterrows():
        if r.paper:
            console.print(f"the paper, {r.hook} (Pythia-1B, SmolLM3-3B): {r.paper}", markup=False)
    console.print(
        "the paper's bar: dominates = A's R² >= B's over the whole shared L0 range; matches = worst gap >= -0.008, "
        "within 0.025, dead cut >= 0.35 absolute",
        markup=False,
    )


def _yes(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "no")


def _tokens_cells(tokens) -> tuple[str, str]:
    """Median and slowest of a column of token counts, — where any is missing (NaN)."""
    if tokens.isna().any():
        return "—", "—"
    return f"{tokens.median():,.0f}", f"{tokens.max():,.0f}"


def _print_convergence(conv, gaps) -> None:
    """Tokens to converge per run and the gap per snapshot (when `eval --checkpoints` has run)."""
    table = Table(
        title="convergence in tokens: until held-out R² stays within 0.005 and L0 within 10% of the run's final "
        "point (median, slowest), and until it stays on its sweep's final frontier (R² at most 0.005 below "
        "it at the run's L0; moving along it counts as converged), and until its held-out training objective "
        "stays within 1% of its final value (— where the objective was not recorded); converged: settled before the "
        "last point by all three (at the last point each holds trivially)"
    )
    heads = ("cell", "variant", "width", "runs", "median", "slowest", "frontier median", "frontier slowest",
             "objective median", "objective slowest", "of", "finished", "converged")  # fmt: skip
    for h in heads:
        table.add_column(h, justify="left" if h in ("cell", "variant") else "right")
    for (model, hook, variant, width), g in conv.groupby(["model", "hook", "variant", "width"]):
        table.add_row(f"{model} {hook}", variant, str(width), str(len(g)), *_tokens_cells(g.tokens_to_converge),
                      *_tokens_cells(g.tokens_on_frontier), *_tokens_cells(g.tokens_to_objective),
                      f"{g.tokens_final.max():,}",
                      f"{int(g.finished.sum())}/{len(g)}", f"{int(g.converged.sum())}/{len(g)}")  # fmt: skip
    console.print(table)
    if gaps is None:
        return
    for (model, hook), g in gaps.groupby(["model", "hook"]):
        trail = ", ".join(f"{t:,}: {w:+.3f}" for t, w in zip(g.tokens, g.worst_gap))
        console.print(f"worst gap by tokens, {model} {hook}: {trail}")


# the figures `plot` draws (plots.PLOTS + training); kept here so --help does not import matplotlib,
# and checked against plots.PLOTS by tests/test_plots.py
PLOT_NAMES = ("pareto", "dead", "census", "ablation", "convergence", "training")


@app.command()
def plot(
    name: str = typer.Argument(..., help=f"One of: {', '.join(PLOT_NAMES)}."),
    results: str = typer.Option("results", help="Results directory (tables from eval / compare / ablate)."),
    runs: list[str] = typer.Option(None, "--run", help="training: run directories (repeat the flag)."),
    out: str = typer.Option("figures", help="Directory for the PNG and PDF files."),
) -> None:
    """Draw a figure from the result tables (PNG + PDF)."""
    from sagsae_cli.plots import PLOTS, plot_training

    if name == "training":
        paths = plot_training(runs or [], out)
    elif name in PLOTS:
        paths = PLOTS[name](results, out)
    else:
        raise SagsaeError(f"unknown plot {name!r}: choose one of {', '.join(PLOT_NAMES)}")
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
def browse(
    runs: list[str] = typer.Argument(
        ...,
        help="Run directories, or SAE directories made by SAELens, sparsify or dictionary_learning (with --store); "
        "two with --compare: A signed, B one-signed.",
    ),
    out: str = typer.Option(
        "site", "--out", "-o", help="Directory for the site (built aside, then moved in)."
    ),
    store: Optional[str] = typer.Option(
        None, help="Store to read (default: the one each run was trained on; needed for SAEs made elsewhere)."
    ),
    allow_mismatch: AllowMismatch = False,
    tokens: Optional[str] = typer.Option(
        None, help="Held-out tokens to stream (default: the whole eval split)."
    ),
    top: int = typer.Option(10, help="Top activating contexts kept per latent and sign (1-1000)."),
    latents: Optional[str] = typer.Option(None, help="Only these latents in the site, e.g. 0-99,512."),
    compare: bool = typer.Option(
        False,
        help="RUN_A RUN_B: for each bipolar latent of A, the latents of B matching its + and − directions.",
    ),
    device: Device = "auto",
    force: bool = typer.Option(False, help="Replace a site already in --out."),
    quiet: Quiet = False,
) -> None:
    """A feature browser: a static site of every latent, both signs apart.

    Per latent and sign: top contexts, activation histograms and logit effects, as features.parquet and a static site (open <out>/index.html; no server, no network). A one-signed SAE's opposed pairs (decoder cosine <= -0.9, co-firing <= 5%) are listed, each pair's two latents side by side.
    """
    from sagsae_cli.browse import browse as run_browse
    from sagsae_cli.distributed import pick_device

    _check(1 <= top <= 1000, f"--top must lie between 1 and 1000 (got {top})")
    n = None if tokens is None else _tokens(tokens, "--tokens")
    keep = None if latents is None else _latent_list(latents)
    index = run_browse(runs, out, store=store, tokens=n, top_k=top, compare=compare, force=force,
                       device=pick_device(device), quiet=quiet, latents=keep, allow_mismatch=allow_mismatch)  # fmt: skip
    console.print(f"site: {index} (open it in a browser); table: {Path(out) / 'features.parquet'}")


def _latent_list(text: str) -> list[int]:
    """0-99,512 -> [0, ..., 99, 512]."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise SagsaeError(f"--latents takes indices and ranges such as 0-99,512 (got {text!r})") from None
        _check(0 <= a <= b, f"--latents: {part.strip()!r} is not a range of latent indices")
        out += range(a, b + 1)
    return sorted(set(out))


def _print_info(path: str) -> None:
    from sagsae_cli.store import open_store

    info = open_store(path).info()
    table = Table(title=f"activation store {path}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in info.items():
        if k == "disk bytes":
            k, v = "disk size", f"{v / 2**20:,.1f} MiB"
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        elif isinstance(v, float):
            v = f"{v:.6g}"
        table.add_row(k, str(v))
    console.print(table)


@store_app.command("info")
def store_info(path: str = typer.Argument(..., help="Store directory or fsspec URL (s3://…).")) -> None:
    """Shape, splits, dtype, metadata, disk size and normalisation factor of a store."""
    _print_info(path)


@store_app.command("import")
def store_import(
    src: str = typer.Argument(
        ..., help=".npy/.npz/.safetensors file, a directory of them, or a datasets directory."
    ),
    out: str = typer.Option(
        ..., "--out", "-o", help="Store directory or fsspec URL to write (resumes an interrupted import)."
    ),
    split_eval: float = typer.Option(
        0.05, help="Share of rows (of contexts, for (contexts, seq, d) sources) held out."
    ),
    column: Optional[str] = typer.Option(None, help="Array name in .npz/.safetensors, or datasets column."),
    dtype: str = typer.Option(
        "float32", help="Store dtype: float32 (fp32), bfloat16 (bf16) or float16 (fp16)."
    ),
    max_norm_ratio: float = typer.Option(10.0, help="Drop rows above this x the median norm (0 = keep all)."),
    model: str = typer.Option("", help="Model name to record (SAELens cfg.json model_name)."),
    hook_name: str = typer.Option("", help="Hook name to record, e.g. blocks.6.hook_resid_pre."),
    force: bool = typer.Option(False, help="Delete an existing store at --out first."),
    quiet: Quiet = False,
) -> None:
    """Activations made elsewhere (SAELens cached activations, nnsight .npy, ...) into a store.

    Streamed in slices with bounded memory; the first --split-eval of the rows becomes the eval split.
    """
    from sagsae_cli.importer import import_store

    _check(0 <= split_eval < 1, f"--split-eval is a share in [0, 1) (got {split_eval:g})")
    _check_norm_ratio(max_norm_ratio)
    from sagsae_cli.store import DTYPE_ALIASES

    dtype = DTYPE_ALIASES.get(dtype, dtype)
    path = import_store(src, out, split_eval=split_eval, column=column, dtype=dtype, max_norm_ratio=max_norm_ratio,
                        model=model, hook_name=hook_name, force=force, quiet=quiet)  # fmt: skip
    _print_info(str(path))


@store_app.command("export")
def store_export(
    path: str = typer.Argument(..., help="Store directory or fsspec URL."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for train.npy and eval.npy."),
    to: str = typer.Option("npy", help="Format (npy: float32, the stored units, not normalised)."),
    force: bool = typer.Option(False, help="Replace existing train.npy / eval.npy."),
    allow_incomplete: bool = typer.Option(
        False, help="Export a store whose harvest or import has not finished (what is committed)."
    ),
    quiet: Quiet = False,
) -> None:
    """A store's splits as .npy files in a local directory (the way back from `store import`)."""
    from sagsae_cli.importer import export_store

    _check(to == "npy", f"--to {to!r} is not supported: use npy")
    for p in export_store(path, out, force=force, quiet=quiet, allow_incomplete=allow_incomplete):
        console.print(f"wrote {p}")


def main() -> None:
    """The console entry point: runs the command, then leaves through `distributed.leave`."""
    from sagsae_cli.allocator import reuse_large_blocks
    from sagsae_cli.distributed import leave

    reuse_large_blocks()  # freed tokens x latents arrays reused, not page-faulted in again (allocator.py)
    try:
        _main()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    if not isinstance(code, int):  # sys.exit("message") prints it and exits 1, as Python does
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    leave(code)


def _main() -> None:
    try:
        with disk_space():  # a full disk outside the store and atomic_write, which name their file
            rc = typer.main.get_command(app).main(prog_name="sagsae", standalone_mode=False)
    except PeerError:
        sys.exit(2)  # rank 0 printed the error
    except SagsaeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _interrupted()
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        where = e.filename or "an output"
        _fail(f"cannot write {where} ({e.strerror or type(e).__name__}): choose another --out / --results, "
              "or fix its permissions")  # fmt: skip
    except OSError as e:
        if e.errno not in (errno.ENAMETOOLONG, errno.EROFS, errno.ELOOP):
            raise
        where = e.filename or "a path"
        fix = {errno.ENAMETOOLONG: "a name in it is longer than the file system allows: choose a shorter path",
               errno.EROFS: "the file system is read-only: choose another --out / --results",
               errno.ELOOP: "it loops through symbolic links: fix the links or choose another path"}[e.errno]  # fmt: skip
        _fail(f"cannot use {where}: {fix}")
    except Exception as e:  # the command-line parser's own exceptions (typer vendors click)
        _parser_error(e)
        raise
    if rc == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130 before we see it
        _interrupted()
    sys.exit(rc if isinstance(rc, int) else 0)


def _parser_error(e: Exception) -> None:
    """Usage errors as one line (exit 2), Ctrl-C as a resume hint (exit 130), explicit exits as is."""
    kinds = {c.__name__ for c in type(e).__mro__}
    ctx = getattr(e, "ctx", None)
    if "NoArgsIsHelpError" in kinds and ctx is not None:
        typer.echo(ctx.get_help())
        sys.exit(2)
    if "UsageError" in kinds:
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else " (see `sagsae --help`)"
        _fail(e.format_message().replace("\n", " ") + hint)
    if "ClickException" in kinds:
        _fail(e.format_message())
    if "Abort" in kinds:
        _interrupted()
    if "Exit" in kinds:
        sys.exit(getattr(e, "exit_code", 0))


def _interrupted() -> None:
    console.print("interrupted: rerun the same command to resume (what was committed is kept)")
    sys.exit(130)


def _fail(message: str) -> None:
    console.print(styled("bold red", "error:", f" {message}"), highlight=False, soft_wrap=True)
    sys.exit(2)
