"""`sagsae eval`, `pairs`, `compare`, `plot` and `browse`: what trained SAEs (and SAEs made elsewhere) do."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sagsae_cli.cli.app import AllowMismatch, Device, EvalTokens, Quiet, _tokens, app
from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.progress import console


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
        check_options,
        convergence,
        gap_by_tokens,
        ratio_label,
        seed_rows,
        write_compare,
    )
    from sagsae_cli.compare import compare as run_compare
    from sagsae_cli.evaluate import read_table

    check_options(matched_l0, width_ratio)

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


def _stretch_cell(g) -> str:
    """Median R² gained / objective lost over the runs' final stretch, — where not measured."""
    r2, obj = g.r2_last_stretch.median(), g.objective_last_stretch.median()
    return "—" if r2 != r2 else f"{r2:+.3f} / {obj:.1%}" if obj == obj else f"{r2:+.3f} / —"


def _print_convergence(conv, gaps) -> None:
    """Tokens to converge per run and the gap per snapshot (when `eval --checkpoints` has run)."""
    table = Table(
        title="convergence in tokens: until held-out R² stays within 0.005 and L0 within 10% of the run's final "
        "point (median, slowest), and until it stays on its sweep's final frontier (R² at most 0.005 below "
        "it at the run's L0; moving along it counts as converged), and until its held-out training objective "
        "stays within 1% of its final value (— where the objective was not recorded); converged: settled before the "
        "last point by all three (at the last point each holds trivially); last stretch: the median R² gained and "
        "objective lost from the last snapshot to the final point (with an lr decay, the anneal is in it)"
    )
    heads = ("cell", "variant", "width", "runs", "median", "slowest", "frontier median", "frontier slowest",
             "objective median", "objective slowest", "of", "last stretch", "finished", "converged")  # fmt: skip
    for h in heads:
        table.add_column(h, justify="left" if h in ("cell", "variant") else "right")
    for (model, hook, variant, width), g in conv.groupby(["model", "hook", "variant", "width"]):
        table.add_row(f"{model} {hook}", variant, str(width), str(len(g)), *_tokens_cells(g.tokens_to_converge),
                      *_tokens_cells(g.tokens_on_frontier), *_tokens_cells(g.tokens_to_objective),
                      f"{g.tokens_final.max():,}", _stretch_cell(g),
                      f"{int(g.finished.sum())}/{len(g)}", f"{int(g.converged.sum())}/{len(g)}")  # fmt: skip
    console.print(table)
    if gaps is None:
        return
    for (model, hook), g in gaps.groupby(["model", "hook"]):
        trail = ", ".join(f"{t:,}: {w:+.3f}" for t, w in zip(g.tokens, g.worst_gap))
        console.print(f"worst gap by tokens, {model} {hook}: {trail}")


# the figures `plot` draws (plots.PLOTS + training and budgets); kept here so --help does not import
# matplotlib, and checked against plots.PLOTS by tests/test_plots.py
PLOT_NAMES = ("pareto", "dead", "census", "ablation", "convergence", "training", "budgets")


@app.command()
def plot(
    name: str = typer.Argument(..., help=f"One of: {', '.join(PLOT_NAMES)}."),
    results: list[str] = typer.Option(
        ["results"],
        help="Results directory (tables from eval / compare / ablate); budgets: one per budget (repeat the flag).",
    ),
    runs: list[str] = typer.Option(None, "--run", help="training: run directories (repeat the flag)."),
    seed: Optional[int] = typer.Option(None, help="budgets: this seed's points (default: seed means)."),
    out: str = typer.Option("figures", help="Directory for the PNG and PDF files."),
) -> None:
    """Draw a figure from the result tables (PNG + PDF).

    budgets: the same cells at several training budgets (`--results` once per budget), R² against L0 per budget."""
    from sagsae_cli.plots import PLOTS, plot_budgets, plot_training

    if name == "training":
        paths = plot_training(runs or [], out)
    elif name == "budgets":
        paths = plot_budgets(results, out, seed)
    elif name in PLOTS:
        require(len(results) == 1, f"plot {name} draws one results directory: give --results once")
        paths = PLOTS[name](results[0], out)
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
        require(0 <= a <= b, f"--latents: {part.strip()!r} is not a range of latent indices")
        out += range(a, b + 1)
    return sorted(set(out))
