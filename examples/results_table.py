"""Print a results directory's tables as Markdown (how README's tables were made).

python examples/results_table.py out/smollm2/results

Eval rows are averaged over seeds per (hook, variant, width, coefficient), with R²'s spread across
seeds; ΔCE = CE with the SAE spliced in − clean CE (nats). Then the compare table (SA-half against
Gated-full per cell) and, when present, the ablation table.
"""

import sys
from pathlib import Path

import pandas as pd

from sagsae_cli.evaluate import read_table

KEYS = ["hook", "variant", "width", "l1"]
MEAN_COLS = ["l0", "r2", "dead_frac", "bipolar_frac", "loss_recovered", "delta_ce", "axis_recovery",
             "latents_per_axis"]  # fmt: skip
CMP_COLS = ["hook", "a", "b", "overlap_lo", "overlap_hi", "dominates", "worst_gap", "max_abs_gap", "dead_cut_at_l0",
            "dead_ratio_geomean"]  # fmt: skip
ABL_COLS = ["label", "seed", "l0", "r2", "dead_frac", "bipolar_frac", "loss_recovered", "delta_r2", "delta_l0",
            "delta_dead_frac"]  # fmt: skip


def markdown(frame: pd.DataFrame) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def seed_table(t: pd.DataFrame) -> pd.DataFrame:
    if {"ce_sae", "ce_clean"} <= set(t):
        t = t.assign(delta_ce=t.ce_sae - t.ce_clean)
    cols = [c for c in MEAN_COLS if c in t and t[c].notna().any()]
    keys = (["model"] if t.model.nunique() > 1 else []) + KEYS  # e.g. synthetic protocols share hooks
    g = t.groupby(keys, dropna=False)
    out = g[cols].mean()
    out.insert(0, "seeds", g["seed"].nunique())
    out.insert(out.columns.get_loc("r2") + 1, "r2_sd", g["r2"].std())
    return out.reset_index().sort_values(keys)


def main(results: str) -> None:
    t = read_table(results)
    ablations = {p.stem: pd.read_parquet(p) for p in sorted((Path(results) / "ablation").glob("*.parquet"))}
    in_ablation = set().union(*(set(a.run) for a in ablations.values()))
    if len(in_ablation) < len(t):  # the ablation runs get their own table
        t = t[~t.run.isin(in_ablation)]
    print(markdown(seed_table(t)))
    cmp = Path(results) / "compare" / "compare.parquet"
    if cmp.exists():
        print()
        c = pd.read_parquet(cmp)
        print(markdown(c[(["model"] if c.model.nunique() > 1 else []) + CMP_COLS]))
    for name, a in ablations.items():
        print(f"\nablation {name}")
        print(markdown(a[[c for c in ABL_COLS if c in a]]))


if __name__ == "__main__":
    main(sys.argv[1])
