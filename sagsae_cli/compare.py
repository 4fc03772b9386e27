"""The paper's comparison per cell (model x hookpoint): SA-half (SA-GSAE at width H) against
Gated-full (the Gated SAE at 2H), from the eval table (PAPER.md §6).

Points are averaged over seeds per (variant, width, coefficient); frontiers are compared with the
Pareto verdict over their L0 overlap, and dead fractions at a matched L0 and as a sweep geomean.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sagsae_cli.errors import SagsaeError
from sagsae_cli.metrics import dead_reduction, pareto_verdict
from sagsae_cli.sae.base import atomic_write

POINT_KEYS = ["model", "hook", "variant", "width", "l1", "target_l0", "k"]


def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """One point per (cell, variant, width, coefficient or target L0): seed means, with min/max of R²."""
    if "target_l0" not in table:  # tables written before target_l0 was a column
        table = table.assign(target_l0=0.0)
    g = table.groupby(POINT_KEYS, dropna=False)
    points = g[["l0", "r2", "dead_frac", "bipolar_frac"]].mean()
    points["r2_min"], points["r2_max"], points["seeds"] = g["r2"].min(), g["r2"].max(), g["seed"].nunique()
    return points.reset_index()


def compare(
    table: pd.DataFrame, matched_l0: float = 64.0, a: str = "sa-gsae", b: str = "gated"
) -> pd.DataFrame:
    """One row per (cell, H) where variant ``a`` at width H and ``b`` at 2H both exist."""
    points = seed_means(table)
    rows = []
    for (model, hook), cell in points.groupby(["model", "hook"], dropna=False):
        for width in sorted(cell.loc[cell.variant == a, "width"].unique()):
            fa = cell[(cell.variant == a) & (cell.width == width)]
            fb = cell[(cell.variant == b) & (cell.width == 2 * width)]
            if fb.empty:
                continue
            verdict = pareto_verdict(fa.l0.tolist(), fa.r2.tolist(), fb.l0.tolist(), fb.r2.tolist())
            dead = dead_reduction(fa.l0.tolist(), fa.dead_frac.tolist(), width, fb.l0.tolist(),
                                  fb.dead_frac.tolist(), 2 * width, matched_l0=matched_l0)  # fmt: skip
            rows.append({"model": model, "hook": hook, "a": f"{a}@{width}", "b": f"{b}@{2 * width}",
                         "points_a": len(fa), "points_b": len(fb), **verdict, **dead,
                         "matched_l0": matched_l0})  # fmt: skip
    if not rows:
        raise SagsaeError(
            f"no cell has both {a} at width H and {b} at 2H in the eval table: train both first"
        )
    return pd.DataFrame(rows)


def write_compare(frame: pd.DataFrame, results: str | Path) -> Path:
    out = Path(results) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.parquet"
    atomic_write(path, lambda p: frame.to_parquet(p, index=False))
    return path
