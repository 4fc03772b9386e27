"""Figures from result tables only (PNG + PDF). One colour per variant across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sagsae_cli.errors import SagsaeError  # noqa: E402
from sagsae_cli.files import HISTORY, REEVAL, TRAIN_CFG, read_json, read_parquet  # noqa: E402
from sagsae_cli.registry import COLORS, LABELS  # noqa: E402  (each variant's colour and legend name)

STYLES = ["-", "--", ":", "-."]  # line style per width of one architecture, narrowest first


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _cells(points: pd.DataFrame):
    cells = list(points.groupby(["model", "hook"], dropna=False))
    if not cells:
        raise SagsaeError("the eval table is empty: run `sagsae eval` first")
    cols = min(3, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(cells) :]:
        ax.set_visible(False)
    return fig, list(zip(axes.flat, cells))


def _width_style(cell: pd.DataFrame, variant: str, width: int) -> str:
    """The line style of one width of ``variant`` in ``cell``: solid for its narrowest, then dashed, dotted, dash-dot."""
    widths = sorted(cell.loc[cell.variant == variant, "width"].unique())
    return STYLES[widths.index(width) % len(STYLES)]


def _log_l0_axis(ax) -> None:
    """A log-scale x axis with readable labels: 1-2-5 ticks, or, where the data span less than a
    factor of 4 (one or no such tick), four ticks spread evenly on the log scale, rounded to 2 digits."""
    ax.set_xscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    lo, hi = ax.get_xlim()
    if 0 < lo < hi < 4 * lo:
        ticks = sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 6)[1:-1]})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        ax.xaxis.set_minor_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else "")
        )
    ax.xaxis.set_major_formatter(fmt)


def _series(ax, cell: pd.DataFrame, y: str, band: tuple[str, str] | None = None):
    for (variant, width), grp in cell.groupby(["variant", "width"]):
        grp = grp.sort_values("l0")
        color = COLORS.get(variant, None)
        label = f"{LABELS.get(variant, variant)}, width {width}"
        ax.plot(
            grp.l0, grp[y], "o" + _width_style(cell, variant, width), color=color, label=label, lw=1.8, ms=4
        )
        if band and (grp.seeds > 1).any():
            ax.fill_between(grp.l0, grp[band[0]], grp[band[1]], color=color, alpha=0.2, lw=0)
    _l0_panel(ax)


def _l0_panel(ax, legend_size: int = 8) -> None:
    """The L0 axis, grid and legend of a panel drawn against L0."""
    _log_l0_axis(ax)
    ax.set_xlabel("L0 (active latents per token, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


def plot_pareto(results: str | Path, out: str | Path) -> list[Path]:
    from sagsae_cli.compare import seed_means
    from sagsae_cli.evaluate import read_table

    points = seed_means(read_table(results))
    verdicts = _maybe(Path(results) / "compare" / "compare.parquet")
    fig, panels = _cells(points)
    for ax, ((model, hook), cell) in panels:
        _series(ax, cell, "r2", band=("r2_min", "r2_max"))
        ax.set_ylabel("R² (fraction of variance explained)")
        title = f"{model} · {hook}"
        if verdicts is not None:
            v = verdicts[(verdicts.model == model) & (verdicts.hook == hook)]
            for _, r in v.iterrows():
                verdict = "dominates" if r.dominates else f"worst gap {r.worst_gap:+.3f}"
                title += f"\n{r.a} vs {r.b}: " + (verdict if r.overlap else "no L0 overlap")
        ax.set_title(title, fontsize=9)
    fig.suptitle("Reconstruction against sparsity (seed mean, band = min-max over seeds)", y=1.04)
    return _save(fig, Path(out), "pareto")


def plot_dead(results: str | Path, out: str | Path) -> list[Path]:
    from sagsae_cli.compare import seed_means
    from sagsae_cli.evaluate import read_table

    points = seed_means(read_table(results))
    fig, panels = _cells(points)
    for ax, ((model, hook), cell) in panels:
        _series(ax, cell, "dead_frac")
        ax.set_ylabel("dead fraction (latents never active on eval)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{model} · {hook}", fontsize=10)
    fig.suptitle("Dead latents against sparsity")
    return _save(fig, Path(out), "dead")


def _census_parts(results: Path) -> pd.DataFrame:
    """Every census part with its run's variant, width, coefficient, seed and model (from the eval part
    of the same name), one row per live latent."""
    parts = sorted((results / "census").glob("*.parquet"))
    if not parts:
        raise SagsaeError(f"no census tables in {results}/census: run `sagsae eval` first")
    frames = []
    for p in parts:
        t = read_parquet(p, REEVAL)
        t = t[(t.n_pos + t.n_neg) > 0]
        ev = results / "eval" / p.name
        row = read_parquet(ev, REEVAL).iloc[0] if ev.exists() else None
        run = str(t["run"].iloc[0]) if len(t) else p.stem
        t = t.assign(
            part=p.stem,
            variant=row["variant"] if row is not None else run.split("-w")[0],
            width=int(row["width"]) if row is not None else 0,
            coef=float(row["l1"]) if row is not None else float("nan"),
            seed=int(row["seed"]) if row is not None else 0,
            model=row["model"] if row is not None else "",
        )
        if "hook" not in t:
            t["hook"] = ""
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def plot_census(results: str | Path, out: str | Path, bipolar: float = 0.1) -> list[Path]:
    """Per (model, hook): the polarity of live latents and where the minority-sign mass sits; one
    colour per architecture, darker for a larger coefficient; the title states each architecture's
    share of bipolar latents (minority share >= ``bipolar``)."""
    live = _census_parts(Path(results))
    cells = list(live.groupby(["model", "hook"], dropna=False))
    fig, axes = plt.subplots(len(cells), 2, figsize=(11, 3.6 * len(cells)), squeeze=False)
    bins = np.linspace(0, 0.5, 26)
    for (ax1, ax2), ((model, hook), cell) in zip(axes, cells):
        coefs = sorted(cell.coef.dropna().unique())
        finding = []
        for (variant, width), arch in cell.groupby(["variant", "width"]):
            share = float((arch.minority_share >= bipolar).mean())
            finding.append(f"{LABELS.get(variant, variant)}@{width}: {share:.0%} bipolar")
            base = matplotlib.colors.to_rgb(COLORS.get(variant, "#444444"))
            for (coef, seed), run in arch.groupby(["coef", "seed"], dropna=False):
                rank = coefs.index(coef) if coef in coefs else 0
                shade = 0.35 + 0.65 * (rank + 1) / max(len(coefs), 1)  # lighter = smaller coefficient
                color = tuple(1 - shade * (1 - c) for c in base)
                label = f"{variant}@{width} λ={coef:g}" if seed == arch.seed.min() else None
                weights = np.full(len(run), 1.0 / len(run))
                ax1.hist(run.minority_share, bins=bins, weights=weights, histtype="step", lw=1.5,
                         color=color, label=label)  # fmt: skip
                mass = np.sort(run[["mass_pos", "mass_neg"]].min(axis=1).to_numpy())[::-1]
                if mass.sum() > 0:
                    ax2.plot(np.arange(1, len(mass) + 1) / len(mass), np.cumsum(mass) / mass.sum(),
                             color=color, lw=1.5, label=label)  # fmt: skip
        ax1.axvline(bipolar, color="0.5", ls=":", lw=1)
        ax1.set_xlabel("minority share min(n+, n−) / (n+ + n−)  (0 = one-signed, 0.5 = balanced)")
        ax1.set_ylabel("fraction of live latents")
        ax1.set_yscale("log")
        ax1.set_title(f"{model} · {hook}: " + ", ".join(finding), fontsize=9)
        ax2.set_xlabel("latents ranked by minority-sign mass (fraction of live latents)")
        ax2.set_ylabel("cumulative share of minority-sign mass")
        ax2.set_title(f"{model} · {hook}: where the minority-sign mass sits", fontsize=9)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Both signs per latent: share of live latents with a minority share ≥ {bipolar:g}", y=1.01)
    return _save(fig, Path(out), "census")


def plot_training(run_dirs: list[str], out: str | Path) -> list[Path]:
    hist = [(Path(d).name, Path(d) / HISTORY) for d in run_dirs]
    hist = [
        (n, read_parquet(p, "it is rewritten at the run's next log step; or retrain the run"))
        for n, p in hist
        if p.exists()
    ]
    if not hist:
        raise SagsaeError("no history.parquet in the given run directories: train them first")
    panels = [("mse", "reconstruction loss ||x - x̂||²"), ("l0", "L0"), ("dead_frac", "dead fraction"),
              ("r2", "R² (training batch)")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6))
    for name, h in hist:
        variant = read_json(
            Path(next(d for d in run_dirs if Path(d).name == name)) / TRAIN_CFG, "retrain it"
        ).get("variant")
        color = COLORS.get(variant)
        for ax, (col, label) in zip(axes, panels):
            if col in h:
                ax.plot(h.tokens / 1e6, h[col], color=color, label=name, lw=1.2)
                ax.set_ylabel(label)
    for ax in axes:
        ax.set_xlabel("training tokens (millions)")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, Path(out), "training")


def plot_ablation(results: str | Path, out: str | Path) -> list[Path]:
    """R² against L0 per ablation (a sparsity coefficient moves both, so the bars of one metric alone
    hide the trade), then L0 and dead-fraction bars. A variant whose code collapsed (L0 under 0.1)
    is named in the first panel instead of squashing its axis."""
    from sagsae_cli.evaluate import read_table

    t = read_table(results, "ablation")
    order = t.groupby("label")["r2"].mean().sort_values(ascending=False).index
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    g = t.groupby("label")
    mean, lo, hi = g[["r2", "l0"]].mean(), g[["r2", "l0"]].min(), g[["r2", "l0"]].max()
    ax, collapsed = axes[0], []
    narrowest = t["width"].min()  # the ablations' H: wider runs (gated at 2H) get square markers
    for lbl in order:
        if mean.l0[lbl] < 0.1:
            collapsed.append(f"{lbl}: collapsed (R² {mean.r2[lbl]:.3f}, L0 {mean.l0[lbl]:.3f})")
            continue
        color = COLORS.get(lbl.split("@")[0], "#999999")
        ax.errorbar(mean.l0[lbl], mean.r2[lbl], xerr=[[mean.l0[lbl] - lo.l0[lbl]], [hi.l0[lbl] - mean.l0[lbl]]],
                    yerr=[[mean.r2[lbl] - lo.r2[lbl]], [hi.r2[lbl] - mean.r2[lbl]]], ls="none", color=color,
                    capsize=3, ms=7, label=lbl, marker="o" if lbl.endswith(f"@{narrowest}") else "s")  # fmt: skip
    if collapsed:
        ax.set_title("; ".join(collapsed), fontsize=8)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("R² (fraction of variance explained)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax, (col, label) in zip(axes[1:], [("l0", "L0"), ("dead_frac", "dead fraction")]):
        gc = g[col]
        m, lo_c, hi_c = gc.mean()[order], gc.min()[order], gc.max()[order]
        colors = [COLORS.get(lbl.split("@")[0], "#999999") for lbl in order]
        ax.bar(range(len(order)), m, color=colors, yerr=[m - lo_c, hi_c - m], capsize=3)
        ax.set_xticks(range(len(order)), order, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Ablations (seed means; whiskers: min-max over seeds)")
    return _save(fig, Path(out), "ablation")


def plot_convergence(results: str | Path, out: str | Path) -> list[Path]:
    """Per cell: the worst R² gap of A@H against B@2H at each snapshot's token count, and held-out R²,
    L0 and training objective (above its final value, %) of every run against tokens (from `eval
    --checkpoints`; the objective panel stays empty for tables evaluated before eval recorded it)."""
    from sagsae_cli.compare import _history, gap_by_tokens
    from sagsae_cli.evaluate import read_table

    snaps = read_table(results, "checkpoints")
    final = read_table(results) if any((Path(results) / "eval").glob("*.parquet")) else None
    hist = _history(snaps, final)
    try:
        gaps = gap_by_tokens(snaps, final)
    except SagsaeError:
        gaps = None
    cells = list(hist.groupby(["model", "hook"], dropna=False))
    fig, axes = plt.subplots(len(cells), 4, figsize=(20, 3.8 * len(cells)), squeeze=False)
    for row, ((model, hook), cell) in zip(axes, cells):
        ax = row[0]
        g = None if gaps is None else gaps[(gaps.model == model) & (gaps.hook == hook)]
        if g is not None and len(g):
            ends = []
            for i, ((a, b), pair) in enumerate(g.groupby(["a", "b"], sort=False)):  # one line per A@H vs B@2H
                pair = pair.sort_values("tokens")
                ax.plot(pair.tokens / 1e6, pair.worst_gap, "o" + STYLES[i % len(STYLES)], color="#333333", lw=1.8,
                        ms=4, label=f"{a} vs {b}")  # fmt: skip
                ends.append(f"{a} vs {b}: worst gap {pair.worst_gap.iloc[-1]:+.3f} at the end")
            ax.axhline(-0.025, color="#d62728", ls=":", lw=1, label="the paper's band (-0.025)")
            ax.axhline(-0.008, color="#d62728", ls="--", lw=0.8, label="the paper's worst gap (-0.008)")
            ax.axhline(0, color="#999999", lw=0.8)
            ax.set_title(f"{model} · {hook}\n" + "\n".join(ends), fontsize=9)
            ax.legend(fontsize=8)
        else:
            ax.set_title(f"{model} · {hook}\n(no token count with snapshots of both sides)", fontsize=9)
        ax.set_ylabel("worst R² gap over the L0 overlap")
        for _, r in cell.groupby("run_dir"):
            r = r.sort_values("tokens")
            v, w = r.variant.iloc[0], r.width.iloc[0]
            cols = [(row[1], r.r2), (row[2], r.l0)]
            if "objective" in r and r.objective.notna().all():  # % above the run's final value
                cols.append((row[3], 100 * (r.objective / r.objective.iloc[-1] - 1)))
            for ax, values in cols:
                ax.plot(r.tokens / 1e6, values, _width_style(cell, v, w), color=COLORS.get(v), lw=1.2, alpha=0.8,
                        label=f"{LABELS.get(v, v)} w{w}")  # fmt: skip
        row[1].set_ylabel("held-out R²")
        row[2].set_ylabel("held-out L0 (log scale)")
        row[2].set_yscale("log")
        tol = row[3].axhline(1, color="#d62728", ls=":", lw=1, label="1% (tokens_to_objective)")
        row[3].set_yscale("symlog", linthresh=1)
        row[3].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        row[3].legend(handles=[tol], fontsize=8)
        row[3].set_ylabel("held-out objective above its final value (%)")
        handles = {h.get_label(): h for h in row[1].get_lines()}  # one legend entry per architecture
        row[1].legend(handles.values(), handles.keys(), fontsize=8)
        for ax in row:
            ax.set_xlabel("training tokens (millions)")
            ax.grid(alpha=0.3)
    fig.suptitle("Convergence against training tokens: the worst gap per cell, held-out R², L0 and training "
                 "objective per run (snapshots from eval --checkpoints)", y=1.0)  # fmt: skip
    return _save(fig, Path(out), "convergence")


def tokens_label(n: float) -> str:
    """A token count as a budget is written on the command line: 500, 200k, 1M, 2.5M."""
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:.3g}"


def plot_budgets(results: list[str | Path], out: str | Path, seed: int | None = None) -> list[Path]:
    """The same cells trained at several budgets, one results directory each: per cell, R² against L0 of
    every (variant, width) at every budget (final points; seed means, or one ``seed``), shortest budget
    palest, and the worst gap per budget (compare's table, where the directory has one) in the title."""
    from sagsae_cli.compare import seed_means
    from sagsae_cli.evaluate import read_table

    if len(results) < 2:
        raise SagsaeError("plot budgets compares budgets: give --results once per budget, at least twice")
    frames, gaps = [], {}
    for r in results:
        table = read_table(r)
        table = table[table.final] if "final" in table else table
        if seed is not None:
            table = table[table.seed == seed]
            if table.empty:
                raise SagsaeError(f"{r} has no final point of seed {seed}: choose a seed every budget has")
        tokens = float(table.tokens.median())
        if any(f.budget.iloc[0] == tokens for f in frames):
            raise SagsaeError(
                f"two results directories at {tokens_label(tokens)} tokens per run: give one per budget"
            )
        frames.append(seed_means(table).assign(budget=tokens))
        name = "compare_seeds" if seed is not None else "compare"
        verdicts = _maybe(Path(r) / "compare" / f"{name}.parquet")
        if verdicts is not None:
            if seed is not None:
                verdicts = verdicts[verdicts.seed == seed]
            for _, v in verdicts.iterrows():
                gaps.setdefault((v.model, v.hook), []).append((tokens, v.worst_gap))
    points = pd.concat(frames, ignore_index=True)
    budgets = sorted(points.budget.unique())
    shade = dict(zip(budgets, np.linspace(0.3, 1.0, len(budgets))))
    fig, panels = _cells(points)
    for ax, ((model, hook), cell) in panels:
        for (variant, width, budget), grp in cell.groupby(["variant", "width", "budget"]):
            grp = grp.sort_values("l0")
            ax.plot(grp.l0, grp.r2, "o" + _width_style(cell, variant, width), color=COLORS.get(variant),
                    alpha=shade[budget], lw=1.8, ms=4,
                    label=f"{LABELS.get(variant, variant)}, width {width}, {tokens_label(budget)}")  # fmt: skip
        _l0_panel(ax, legend_size=7)
        ax.set_ylabel("R² (fraction of variance explained)")
        trail = ", ".join(f"{tokens_label(t)} {g:+.4f}" for t, g in sorted(gaps.get((model, hook), [])))
        ax.set_title(f"{model} · {hook}" + (f"\nworst gap: {trail}" if trail else ""), fontsize=9)
    who = f"seed {seed}" if seed is not None else "seed means"
    fig.suptitle(f"Reconstruction against sparsity at {len(budgets)} training budgets ({who}; palest = fewest tokens)",
                 y=1.04)  # fmt: skip
    return _save(fig, Path(out), "budgets")


def _maybe(path: Path) -> pd.DataFrame | None:
    return (
        read_parquet(path, "rerun the command that wrote it (`sagsae compare` or `sagsae eval`)")
        if path.exists()
        else None
    )


PLOTS = {"pareto": plot_pareto, "dead": plot_dead, "census": plot_census, "ablation": plot_ablation,
         "convergence": plot_convergence}  # fmt: skip
