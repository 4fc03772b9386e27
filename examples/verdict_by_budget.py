"""The paper's criteria per cell at several training budgets, one seed at a time: how the verdict of
`sagsae compare` moves as the same cells are trained longer. docs/RESULTS.md's "Four times longer" table
comes from this.

    python examples/verdict_by_budget.py out/six/gemma3-270m/results out/six/gemma3-270m/results-1m \
        out/six/gemma3-270m/results-4m --seed 0

Each argument is a results directory on which `sagsae compare` has run. Per cell (model, hook) and
budget (the tokens per run of its final points), for the one seed: whether SA-half dominates, the worst
gap, the absolute dead cut at the matched L0 (each budget matches inside its own L0 overlap), the
sweep-geomean dead ratio, and the sweep means of L0 and of the dead fractions of both sides.
"""

import argparse
from pathlib import Path

import pandas as pd

from sagsae_cli.errors import SagsaeError
from sagsae_cli.evaluate import read_table
from sagsae_cli.plots import tokens_label

HEAD = ["model", "hook", "tokens per run", "dominates?", "worst gap", "dead cut at matched L0",
        "dead ratio (geomean)", "L0 SA-half / Gated-full", "dead SA-half / Gated-full"]  # fmt: skip


def rows(results: Path, seed: int) -> list[tuple[float, list[str]]]:
    """(tokens per run, table row) per cell of one results directory, for ``seed``."""
    seeds = results / "compare" / "compare_seeds.parquet"
    if not seeds.exists():
        raise SagsaeError(f"{results} has no compare table: run `sagsae compare --results {results}` first")
    cmp = pd.read_parquet(seeds)
    cmp = cmp[cmp.seed == seed]
    if cmp.empty:
        raise SagsaeError(f"{results} has no verdict for seed {seed}: choose a seed it was trained with")
    final = read_table(results)
    final = final[final.final & (final.seed == seed)]
    out = []
    for _, r in cmp.sort_values(["model", "hook"]).iterrows():
        cell = final[(final.model == r.model) & (final.hook == r.hook)]
        a, b = (
            cell[(cell.variant + "@" + cell.width.astype(str)) == name] for name in (r.a, r.b)
        )  # "sa-gsae@576"
        cut = f"{r.dead_cut_at_l0:+.3f} at L0 {r.matched_l0:.3g}" if pd.notna(r.dead_cut_at_l0) else "n/a"
        tokens = float(pd.concat([a, b]).tokens.median())
        out.append((tokens, [r.model, r.hook, tokens_label(tokens),
                    "yes" if r.dominates else f"no (fails at L0 {r.fail_l0:.3g})", f"{r.worst_gap:+.4f}", cut,
                    f"{r.dead_ratio_geomean:.3g}×", f"{a.l0.mean():.1f} / {b.l0.mean():.1f}",
                    f"{a.dead_frac.mean():.3f} / {b.dead_frac.mean():.3f}"]))  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results directories `sagsae compare` has run on")
    p.add_argument("--seed", type=int, default=0, help="the seed whose verdicts are shown (default 0)")
    args = p.parse_args()
    try:
        table = [row for results in args.results for row in rows(results, args.seed)]
    except SagsaeError as e:
        p.exit(2, f"error: {e}\n")
    table.sort(key=lambda item: (item[1][0], item[1][1], item[0]))  # model, hook, budget
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for _, row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
