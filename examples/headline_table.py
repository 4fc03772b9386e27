"""docs/RESULTS.md's headline table: the paper's six cells (from its abstract) and ours side by side, from the
compare and convergence tables that `sagsae compare` saved in each results directory.

    python examples/headline_table.py out/six/smollm2-135m/results out/six/gemma3-270m/results [--tokens 200k]

Ours: seed means, verdicts per seed in brackets; "converged" counts the runs that settled before their last
snapshot by each of compare's three tokens-to-converge definitions (R² and L0 / on the frontier / on the
objective), and the median R² gained and objective lost over the runs' last stretch (last snapshot to end). Then a second table per cell: dead fractions, SA-half's bipolar census and Gated-full's
opposed pairs (sweep means over coefficients, seed means).
"""

import sys
from pathlib import Path

import pandas as pd

from sagsae_cli.compare import BAND

PAPER = [  # the abstract (../shared/PAPER.md §1): widths, budgets and per-cell figures beyond these are not stated
    ("Pythia-1B", "mlp_out", "yes", "≥ 0", "yes", "—", "~100–500×"),
    ("SmolLM3-3B", "mlp_out", "yes", "≥ 0", "yes", "—", "~100–500×"),
    ("Pythia-1B", "resid_mid", "yes", "≥ 0", "yes", "—", "~100–500×"),
    ("SmolLM3-3B", "resid_mid", "no", "≥ −0.008", "yes", "0.35–0.62", "~2–4×"),
    ("Pythia-1B", "attn_out", "no", "≥ −0.008", "yes", "0.35–0.62", "~2–4×"),
    ("SmolLM3-3B", "attn_out", "no", "≥ −0.008", "yes", "0.35–0.62", "~2–4×"),
]
HEAD = ["source", "model", "hook", "H (SA) / 2H", "dominates? (every seed)", "worst gap (worst seed)",
        "within 0.025?", "dead cut at matched L0", "dead ratio (geomean)", "seeds", "tokens per run",
        "converged runs"]  # fmt: skip


def yes(v) -> str:
    return "yes" if v is True or v == 1 else "no"


def ours(results: Path, tokens: str) -> list[list[str]]:
    cmp = pd.read_parquet(results / "compare" / "compare.parquet")
    conv_path = results / "compare" / "convergence.parquet"
    conv = pd.read_parquet(conv_path) if conv_path.exists() else None
    rows = []
    for _, r in cmp.sort_values(["model", "hook"]).iterrows():
        conv_cell = "—"
        if conv is not None and "converged" in conv:
            c = conv[(conv.model == r.model) & (conv.hook == r.hook) & conv.finished]
            settled = [
                int((c[col] < c.tokens_final).sum())
                for col in ("tokens_to_converge", "tokens_on_frontier", "tokens_to_objective")
            ]
            conv_cell = " / ".join(map(str, settled)) + f" of {len(c)}"
            if (
                "r2_last_stretch" in c and c.r2_last_stretch.notna().any()
            ):  # what the final stretch still moved
                conv_cell += (f" (last stretch {c.r2_last_stretch.median():+.3f} R², "
                              f"{c.objective_last_stretch.median():.1%} objective)")  # fmt: skip
        width = r.a.split("@")[1] + " / " + r.b.split("@")[1]
        rows.append(["ours", r.model, r.hook, width, f"{yes(r.dominates)} ({yes(r.dominates_every_seed)})",
                     f"{r.worst_gap:+.4f} ({r.worst_gap_seed_min:+.4f})", yes(r.worst_gap >= -BAND),
                     f"{r.dead_cut_at_l0:+.3f} at L0 {r.matched_l0:.3g}" if pd.notna(r.dead_cut_at_l0) else "n/a",
                     f"{r.dead_ratio_geomean:.3g}×", str(r.seeds), tokens, conv_cell])  # fmt: skip
    return rows


def main() -> None:
    args = sys.argv[1:]
    tokens = "?"
    if "--tokens" in args:
        i = args.index("--tokens")
        tokens, args = args[i + 1], args[:i] + args[i + 2 :]
    rows = [
        ["paper", m, h, "not stated", d, g, w, c, r, "3", "not stated", "not stated"]
        for m, h, d, g, w, c, r in PAPER
    ]
    for results in args:
        rows += ours(Path(results), tokens)
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    cells = ["model", "hook", "SA-half dead", "Gated-full dead", "SA-half bipolar share of live latents",
             "minority mass in SA-half's top 1% / 10%", "Gated-full's live latents in opposed pairs", "opposed pairs"]  # fmt: skip
    print("| " + " | ".join(cells) + " |")
    print("|" + "---|" * len(cells))
    for results in args:
        for line in census_rows(Path(results)):
            print("| " + " | ".join(line) + " |")


def census_rows(results: Path) -> list[list[str]]:
    from sagsae_cli.evaluate import read_table

    t = read_table(results)
    out = []
    for (model, hook), g in t.groupby(["model", "hook"]):
        sa, gated = g[g.variant == "sa-gsae"], g[g.variant == "gated"]
        if sa.empty or gated.empty:
            continue
        pairs = gated.opposed_pair_share.mean() if "opposed_pair_share" in gated else float("nan")
        n_pairs = gated.opposed_pairs.mean() if "opposed_pairs" in gated else float("nan")
        out.append([model, hook, f"{sa.dead_frac.mean():.3f}", f"{gated.dead_frac.mean():.3f}",
                    f"{sa.bipolar_frac.mean():.2f}", f"{sa.bipolar_mass_top1.mean():.2f} / {sa.bipolar_mass_top10.mean():.2f}",
                    f"{pairs:.3f}", f"{n_pairs:.1f}"])  # fmt: skip
    return out


if __name__ == "__main__":
    main()
