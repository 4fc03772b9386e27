"""Print a results directory's eval and compare tables as Markdown (how README's tables were made).

python examples/results_table.py out/quickstart/results
"""

import sys
from pathlib import Path

import pandas as pd

from sagsae_cli.evaluate import read_table

EVAL_COLS = ["hook", "variant", "width", "l1", "params", "r2", "l0", "dead_frac", "bipolar_frac", "loss_recovered",
             "axis_recovery", "latents_per_axis"]  # fmt: skip
CMP_COLS = ["hook", "a", "b", "overlap_lo", "overlap_hi", "dominates", "worst_gap", "max_abs_gap", "dead_cut_at_l0",
            "dead_ratio_geomean"]  # fmt: skip


def markdown(frame: pd.DataFrame) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(results: str) -> None:
    t = read_table(results)
    print(markdown(t[[c for c in EVAL_COLS if c in t]].sort_values(["hook", "variant", "width", "l1"])))
    cmp = Path(results) / "compare" / "compare.parquet"
    if cmp.exists():
        print()
        print(markdown(pd.read_parquet(cmp)[CMP_COLS]))


if __name__ == "__main__":
    main(sys.argv[1])
