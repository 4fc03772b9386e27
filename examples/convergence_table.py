"""Print the convergence study (examples/convergence_study.sh) as a Markdown table: per candidate,
tokens to converge of SA-GSAE@H and Gated@2H (median and slowest over the sweep), their ratio, the
slowest runs by the on-the-frontier and on-the-objective definitions (`compare.convergence`'s
``tokens_on_frontier``, ``tokens_to_objective``; — for tables evaluated before eval recorded the
objective), and the final comparison (worst gap, dead ratio) with SA-GSAE's latents per axis. A candidate that trains
both architectures at several widths (b256-widths) also gets tokens to converge per width.

    python examples/convergence_table.py out/convergence
"""

import sys
from pathlib import Path

import pandas as pd


def _slowest_pair(sa: pd.DataFrame, ga: pd.DataFrame, col: str) -> str:
    """'SA slowest / Gated slowest (ratio)' of one convergence column, — where a run has none (an
    objective not recorded, a run off its frontier at the end)."""
    if col not in sa or sa[col].isna().any() or ga[col].isna().any():
        return "—"
    a, b = sa[col].max(), ga[col].max()
    return f"{a / 1e6:.2f}M / {b / 1e6:.2f}M ({a / b:.2f})"


def main(root: str) -> None:
    print(
        "| candidate | SA ttc median | SA ttc slowest | Gated ttc median | Gated ttc slowest | ratio (slowest) "
        "| on the frontier: SA slowest / Gated slowest (ratio) "
        "| on the objective: SA slowest / Gated slowest (ratio) "
        "| final worst gap | dead ratio | SA latents/axis (λ ascending) | λ |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_width = {}
    for cand in sorted(
        p for p in Path(root).iterdir() if (p / "results" / "compare" / "convergence.parquet").exists()
    ):
        res = cand / "results"
        conv = pd.read_parquet(res / "compare" / "convergence.parquet")
        cmp_ = pd.read_parquet(res / "compare" / "compare.parquet").iloc[0]
        ev = pd.concat(pd.read_parquet(p) for p in (res / "eval").glob("*.parquet"))
        sa, ga = conv[conv.variant != "gated"], conv[conv.variant == "gated"]  # A: sa-gsae or an ablation
        if conv.groupby("variant").width.nunique().max() > 1:  # b256-widths: the pairs at equal width
            by_width[cand.name] = conv
            sa, ga = sa[sa.width == sa.width.min()], ga[ga.width == ga.width.max()]
        sa_runs = ev[(ev.variant != "gated") & (ev.width == sa.width.min())]
        per_axis = sa_runs.sort_values("l1").latents_per_axis.round(2).tolist()
        lams = " / ".join(f"{v:g}" for v in sorted(sa_runs.l1.unique()))
        gap = "n/a (no L0 overlap)" if pd.isna(cmp_.worst_gap) else f"{cmp_.worst_gap:+.4f}"
        dead = "n/a" if pd.isna(cmp_.dead_ratio_geomean) else f"{cmp_.dead_ratio_geomean:.2f}x"
        print(
            f"| {cand.name} | {sa.tokens_to_converge.median() / 1e6:.2f}M | {sa.tokens_to_converge.max() / 1e6:.2f}M "
            f"| {ga.tokens_to_converge.median() / 1e6:.2f}M | {ga.tokens_to_converge.max() / 1e6:.2f}M "
            f"| {sa.tokens_to_converge.max() / ga.tokens_to_converge.max():.2f} "
            f"| {_slowest_pair(sa, ga, 'tokens_on_frontier')} | {_slowest_pair(sa, ga, 'tokens_to_objective')} | {gap} "
            f"| {dead} | {' / '.join(map(str, per_axis))} | {lams} |"
        )

    for name, conv in by_width.items():  # tokens to converge per architecture and width
        print(
            f"\n{name}: tokens to converge by architecture and width (λ 0.2 / 0.4 / 0.8; median, slowest)\n"
        )
        print("| architecture | width | per λ | median | slowest | on the frontier, per λ |")
        print("|---|---|---|---|---|---|")
        for (variant, width), g in conv.groupby(["variant", "width"]):
            g = g.sort_values("l1")
            t, f = g.tokens_to_converge / 1e6, g.tokens_on_frontier / 1e6
            per, per_f = (" / ".join(f"{v:.2f}M" for v in col) for col in (t, f))
            print(f"| {variant} | {width} | {per} | {t.median():.2f}M | {t.max():.2f}M | {per_f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/convergence")
