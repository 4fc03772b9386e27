"""How far a longer budget still moved each cell's runs: the same (variant, width, coefficient, seed)
trained at two budgets, final points against final points. A run that had converged at the shorter
budget would end where the longer one ends; docs/RESULTS.md's "Convergence" table comes from this.

    python examples/budget_delta.py out/six/smollm2-135m/results out/six/smollm2-135m/results-1m \
        out/six/gemma3-270m/results out/six/gemma3-270m/results-1m

Arguments come in pairs (shorter budget, longer budget). Per cell and variant, over the runs both
budgets have: the median and the range of the held-out objective's fall (relative to the longer run's
value), of the L0 ratio (longer / shorter) and of the R² change; then a check of `sagsae compare`'s
convergence verdict at the shorter budget against the longer one: how many runs compare called
converged there (its convergence table, where the shorter results have one) and how many the longer
budget moved by less than 1% of the objective (the tolerance of compare's objective definition).
A definition that calls runs converged which the longer budget still moves is too lax.
"""

import sys
from pathlib import Path

import pandas as pd

from sagsae_cli.compare import OBJECTIVE_TOL
from sagsae_cli.errors import SagsaeError
from sagsae_cli.evaluate import read_table

KEYS = ["model", "hook", "variant", "width", "l1", "seed"]


def deltas(short: str, long: str):
    a, b = read_table(short), read_table(long)
    j = a[KEYS + ["objective", "r2", "l0", "eval_tokens"]].merge(
        b[KEYS + ["objective", "r2", "l0"]], on=KEYS, suffixes=("_short", "_long")
    )
    j = j.assign(
        objective_fall=j.objective_short / j.objective_long - 1,
        l0_ratio=j.l0_long / j.l0_short,
        r2_change=j.r2_long - j.r2_short,
    )
    conv = Path(short) / "compare" / "convergence.parquet"
    c = pd.read_parquet(conv) if conv.exists() else pd.DataFrame()
    if "converged" not in c:  # no compare at the shorter budget (or an empty table): "—"
        return j.assign(converged=float("nan"))
    return j.merge(c[c.finished][KEYS + ["converged"]], on=KEYS, how="left")  # finished runs only


def span(s, fmt: str) -> str:
    return f"{format(s.median(), fmt)} ({format(s.min(), fmt)} to {format(s.max(), fmt)})"


def main() -> None:
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    print(
        "| model | hook | variant | runs | objective fall, median (range) | L0 longer / shorter | R² change "
        "| converged at the shorter budget (compare) | moved < 1% by the longer |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for short, long in zip(args[::2], args[1::2]):
        try:
            j = deltas(short, long)
        except SagsaeError as e:
            sys.exit(f"error: {e}")  # one line, exit 1 as sys.exit does; the table so far stays printed
        for (model, hook, variant), g in j.groupby(["model", "hook", "variant"]):
            said = "—" if g.converged.isna().all() else str(int(g.converged.fillna(False).astype(bool).sum()))
            print(f"| {model} | {hook} | {variant} | {len(g)} | {span(g.objective_fall, '.1%')} | "
                  f"{span(g.l0_ratio, '.2f')} | {span(g.r2_change, '+.3f')} | {said} | "
                  f"{int((g.objective_fall.abs() < OBJECTIVE_TOL).sum())} |")  # fmt: skip


if __name__ == "__main__":
    main()
