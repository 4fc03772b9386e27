"""The paper's comparison per cell (model x hookpoint): SA-half (SA-GSAE at width H) against
Gated-full (the Gated SAE at 2H), from the eval table (docs/METHOD.md §6); any two variants and any
width ratio (1: equal widths) the same way.

Points are averaged over seeds per (variant, width, coefficient); frontiers are compared by the paper's
criteria: strict dominance over their L0 overlap (and where it fails), the worst gap against the 0.025
band and the paper's -0.008, the absolute dead cut at a matched L0 (by default the middle of the cell's
own overlap) and the sweep-geomean dead ratio; on seed means and on each seed alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.files import atomic_write, read_parquet
from sagsae_cli.metrics import (
    dead_reduction,
    last_stretch,
    pareto_verdict,
    tokens_on_frontier,
    tokens_to_converge,
    tokens_to_objective,
)

POINT_KEYS = ["model", "hook", "variant", "width", "l1", "target_l0", "k"]


def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """One point per (cell, variant, width, coefficient or target L0): seed means, with min/max of R²."""
    if "target_l0" not in table:  # tables written before target_l0 was a column
        table = table.assign(target_l0=0.0)
    _one_run_per_seed(table)
    if "opposed_pair_share" not in table:  # tables evaluated before eval counted opposed pairs
        table = table.assign(opposed_pair_share=float("nan"))
    g = table.groupby(POINT_KEYS, dropna=False)
    points = g[["l0", "r2", "dead_frac", "bipolar_frac", "opposed_pair_share"]].mean()
    points["r2_min"], points["r2_max"], points["seeds"] = g["r2"].min(), g["r2"].max(), g["seed"].nunique()
    return points.reset_index()


def _one_run_per_seed(table: pd.DataFrame) -> None:
    """Refuse a table holding two different runs (run directories) of one variant, width, coefficient
    and seed (e.g. runs trained with other settings into another --out, evaluated into the same
    --results): seed means would average them as if they were seeds."""
    if "run_dir" not in table or table.empty:
        return
    runs = table.groupby(RUN_KEYS, dropna=False).run_dir.unique()
    twice = runs[runs.map(len) > 1]
    if len(twice):
        key, dirs = dict(zip(RUN_KEYS, twice.index[0])), sorted(twice.iloc[0])
        coef = f"k {key['k']}" if key["k"] else f"λ {key['l1']:g}"
        raise SagsaeError(
            f"the results table holds {len(dirs)} different runs of {key['variant']}@{key['width']} {coef} seed "
            f"{key['seed']} ({', '.join(dirs)}): seed means would average them; evaluate each set of runs "
            "into its own --results"
        )


def ratio_label(ratio: int) -> str:
    """B's width in words: 2H, or H for equal widths."""
    return "H" if ratio == 1 else f"{ratio}H"


# The paper's criteria (its abstract: ../shared/PAPER.md §1). A cell either dominates (A's R² >= B's over
# the whole shared L0 range) or matches: within BAND of R², worst gap no worse than PAPER_WORST_GAP, and
# an absolute dead-fraction cut of at least PAPER_DEAD_CUT[0].
BAND = 0.025
PAPER_WORST_GAP = -0.008
PAPER_DEAD_CUT = (0.35, 0.62)

# What the paper reports for each hookpoint on its two models (Pythia-1B, SmolLM3-3B): printed beside ours
PAPER_CELLS = {
    "mlp_out": "dominates on both models; dead ratio ~100-500x",
    "resid_mid": "Pythia-1B dominates (~100-500x); SmolLM3-3B within 0.025, gap >= -0.008, cut 0.35-0.62, ~2-4x",
    "attn_out": "within 0.025 on both, gap >= -0.008, cut 0.35-0.62; dead ratio ~2-4x",
}


def paper_verdict(dominates, worst_gap: float, dead_cut: float) -> str:
    """Which of the paper's claims a comparison meets: ``dominates`` (strict dominance over the shared L0
    range), ``matches`` (within the 0.025 band with a worst gap >= -0.008 and a dead cut >= 0.35
    absolute), ``within 0.025`` (the band alone), ``outside 0.025``, or ``no overlap``."""
    if dominates is None or pd.isna(worst_gap):
        return "no overlap"
    if dominates:
        return "dominates"
    if worst_gap >= PAPER_WORST_GAP and pd.notna(dead_cut) and dead_cut >= PAPER_DEAD_CUT[0]:
        return "matches"
    return "within 0.025" if worst_gap >= -BAND else "outside 0.025"


def _pair(fa: pd.DataFrame, fb: pd.DataFrame, width: int, ratio: int, matched_l0: float | None) -> dict:
    """The paper's criteria for one pair of frontiers (seed means, or one seed's points)."""
    verdict = pareto_verdict(fa.l0.tolist(), fa.r2.tolist(), fb.l0.tolist(), fb.r2.tolist())
    dead = dead_reduction(fa.l0.tolist(), fa.dead_frac.tolist(), width, fb.l0.tolist(),
                          fb.dead_frac.tolist(), ratio * width, matched_l0=matched_l0)  # fmt: skip
    within = bool(verdict["worst_gap"] >= -BAND) if verdict["overlap"] else None
    return {**verdict, **dead, "within_band": within,
            "paper_verdict": paper_verdict(verdict["dominates"], verdict["worst_gap"], dead["dead_cut_at_l0"])}  # fmt: skip


def check_options(matched_l0: float | None, ratio: int) -> None:
    """compare's own numbers, checked before any table is read."""
    require(
        matched_l0 is None or (math.isfinite(matched_l0) and matched_l0 > 0),
        f"--matched-l0 must be positive (got {matched_l0})",
    )
    require(ratio >= 1, f"--width-ratio must be a whole number >= 1 (got {ratio})")


def compare(
    table: pd.DataFrame, matched_l0: float | None = None, a: str = "sa-gsae", b: str = "gated", ratio: int = 2
) -> pd.DataFrame:
    """One row per (cell, H) where variant ``a`` at width H and ``b`` at ``ratio`` x H both exist (the
    paper's comparison: ratio 2; ratio 1 compares equal widths): the paper's criteria on seed means
    (``pareto_verdict``, ``dead_reduction`` at ``matched_l0``, or inside the cell's own L0 overlap when
    None, ``paper_verdict``), the same on each seed that both sides have (``seed_rows``), and whether
    the verdict holds in every seed (``*_every_seed``, the per-seed extremes)."""
    check_options(matched_l0, ratio)
    rows = [
        {k: v for k, v in r.items() if k != "per_seed"} for r in _compare_rows(table, matched_l0, a, b, ratio)
    ]
    return pd.DataFrame(rows)


def seed_rows(
    table: pd.DataFrame, matched_l0: float | None = None, a: str = "sa-gsae", b: str = "gated", ratio: int = 2
) -> pd.DataFrame:
    """The paper's criteria per cell and seed (one row per (cell, H, seed) both sides have)."""
    return pd.DataFrame([s for r in _compare_rows(table, matched_l0, a, b, ratio) for s in r["per_seed"]])


def _compare_rows(table, matched_l0, a, b, ratio) -> list[dict]:
    points = seed_means(table)
    if "target_l0" not in table:
        table = table.assign(target_l0=0.0)
    rows = []
    for (model, hook), cell in points.groupby(["model", "hook"], dropna=False):
        for width in sorted(cell.loc[cell.variant == a, "width"].unique()):
            fa = cell[(cell.variant == a) & (cell.width == width)]
            fb = cell[(cell.variant == b) & (cell.width == ratio * width)]
            if fb.empty:
                continue
            head = {"model": model, "hook": hook, "a": f"{a}@{width}", "b": f"{b}@{ratio * width}"}
            mean = _pair(fa, fb, width, ratio, matched_l0)
            runs = table[(table.model == model) & (table.hook == hook)]
            ra, rb = (
                runs[(runs.variant == a) & (runs.width == width)],
                runs[(runs.variant == b) & (runs.width == ratio * width)],
            )
            per_seed = []
            for seed in sorted(set(ra.seed) & set(rb.seed)):
                one = _pair(ra[ra.seed == seed], rb[rb.seed == seed], width, ratio, mean["matched_l0"])
                per_seed.append({**head, "seed": int(seed), **one})
            ps = pd.DataFrame(per_seed)
            every = {
                "dominates_every_seed": bool(ps.dominates.eq(True).all()) if len(ps) else None,
                "within_band_every_seed": bool(ps.within_band.eq(True).all()) if len(ps) else None,
                "verdict_every_seed": bool(ps.paper_verdict.eq(mean["paper_verdict"]).all())
                if len(ps)
                else None,
                "worst_gap_seed_min": float(ps.worst_gap.min()) if len(ps) else float("nan"),
                "dead_cut_seed_min": float(ps.dead_cut_at_l0.min()) if len(ps) else float("nan"),
                "dead_ratio_seed_min": float(ps.dead_ratio_geomean.min()) if len(ps) else float("nan"),
            }
            # what sign-awareness holds in one latent (A's bipolar share) against what a one-signed B spends on
            # two (the share of its live latents in opposed pairs), sweep means
            capacity = {"a_bipolar_frac": float(fa.bipolar_frac.mean()),
                        "b_opposed_pair_share": float(fb.opposed_pair_share.mean())}  # fmt: skip
            rows.append({**head, "points_a": len(fa), "points_b": len(fb), "seeds": len(ps), **mean, **every, **capacity,
                         "paper": PAPER_CELLS.get(hook, "") if ratio == 2 else "", "per_seed": per_seed})  # fmt: skip
    if not rows:
        raise SagsaeError(
            f"no cell has both {a} at width H and {b} at {ratio_label(ratio)} in the eval table: train both first"
        )
    return rows


RUN_KEYS = [*POINT_KEYS, "seed"]
SWEEP_KEYS = ["model", "hook", "variant", "width", "seed"]  # a run's final frontier: its sweep's final points


def _history(checkpoints: pd.DataFrame, final: pd.DataFrame | None) -> pd.DataFrame:
    """Snapshot rows and final rows of the same runs, one table (final rows win on equal tokens)."""
    parts = [checkpoints.assign(final=False)] + ([final.assign(final=True)] if final is not None else [])
    rows = pd.concat(parts, ignore_index=True)
    if "target_l0" not in rows:
        rows = rows.assign(target_l0=0.0)
    rows = rows.sort_values("final").drop_duplicates(["run_dir", "tokens"], keep="last")
    return rows[rows.run_dir.isin(checkpoints.run_dir)].sort_values(["run_dir", "tokens"])


OBJECTIVE_TOL = 0.01  # tokens_to_objective's tolerance: the objective within 1% of its final value


def convergence(checkpoints: pd.DataFrame, final: pd.DataFrame | None = None, r2_tol: float = 0.005,
                l0_tol: float = 0.1, objective_tol: float = OBJECTIVE_TOL) -> pd.DataFrame:  # fmt: skip
    """Per run: tokens to converge (held-out R² within ``r2_tol`` of its final value and L0 within
    ``l0_tol`` of its final one from then on; ``metrics.tokens_to_converge``), with the final point,
    and ``tokens_on_frontier``: from when on the run stays on the final frontier of its sweep (the
    last points of the runs sharing its cell, variant, width and seed; ``metrics.tokens_on_frontier``),
    which does not count moving along that frontier as unconverged, and ``tokens_to_objective``: from
    when on its held-out training objective stays within ``objective_tol`` (relative) of its final value
    (``metrics.tokens_to_objective``; NaN for rows evaluated before eval recorded the objective).
    ``finished`` is False when the run's last point is a snapshot (training still under way).
    ``r2_last_stretch`` / ``objective_last_stretch``: how much the final stretch, from the last
    snapshot to the final point, still raised R² (absolute) and lowered the objective (relative to its
    final value); under an lr decay that stretch includes the anneal (docs/METHOD.md §6)."""
    history = _history(checkpoints, final)
    if "objective" not in history:
        history = history.assign(objective=float("nan"))
    lasts = history.groupby("run_dir").tail(1)
    rows = []
    for run_dir, g in history.groupby("run_dir"):
        last = g.iloc[-1]
        ttc = tokens_to_converge(g.tokens.to_numpy(), g.r2.to_numpy(), g.l0.to_numpy(), r2_tol, l0_tol)
        sweep = lasts[(lasts[SWEEP_KEYS].fillna(-1) == last[SWEEP_KEYS].fillna(-1)).all(axis=1)]
        on_frontier = tokens_on_frontier(g.tokens.to_numpy(), g.r2.to_numpy(), g.l0.to_numpy(),
                                         sweep.l0.to_numpy(), sweep.r2.to_numpy(), r2_tol, l0_tol)  # fmt: skip
        rows.append({**{k: last[k] for k in RUN_KEYS}, "run": last["run"], "run_dir": run_dir,
                     "finished": bool(last["final"]), "points": len(g), "tokens_final": int(last.tokens),
                     "r2_final": float(last.r2), "l0_final": float(last.l0), "tokens_to_converge": ttc,
                     "converged_at_frac": ttc / float(last.tokens), "tokens_on_frontier": on_frontier,
                     "tokens_to_objective": tokens_to_objective(g.tokens.to_numpy(), g.objective.to_numpy(),
                                                                objective_tol),
                     "sweep_points": len(sweep),
                     **dict(zip(("r2_last_stretch", "objective_last_stretch"),
                                last_stretch(g.tokens.to_numpy(), g.r2.to_numpy(), g.objective.to_numpy())))})  # fmt: skip
    frame = pd.DataFrame(rows)
    if len(frame):
        # converged: settled before the last point by every definition (at the last point each holds trivially)
        settled = [
            frame[c] < frame.tokens_final
            for c in ("tokens_to_converge", "tokens_on_frontier", "tokens_to_objective")
        ]
        frame["converged"] = settled[0] & settled[1] & settled[2]
    return frame


def gap_by_tokens(checkpoints: pd.DataFrame, final: pd.DataFrame | None = None, matched_l0: float | None = None,
                  a: str = "sa-gsae", b: str = "gated", ratio: int = 2) -> pd.DataFrame:  # fmt: skip
    """The comparison of ``compare`` at every token count where both sides have a snapshot (runs of one
    cell trained with the same --tokens, --batch and --snapshots share them)."""
    frames = []
    for tokens, at in _history(checkpoints, final).groupby("tokens"):
        try:
            frames.append(
                compare(at, matched_l0=matched_l0, a=a, b=b, ratio=ratio).assign(tokens=int(tokens))
            )
        except SagsaeError:
            continue  # one side has no snapshot at this token count
    if not frames:
        raise SagsaeError(
            f"no token count has snapshots of both {a} at H and {b} at {ratio_label(ratio)}: train both with --snapshots"
        )
    return pd.concat(frames, ignore_index=True)


PAIR_KEYS = ["model", "hook", "a", "b"]


def write_compare(
    frame: pd.DataFrame, results: str | Path, name: str = "compare", keep: list | None = None
) -> Path:
    """Write ``results/compare/<name>.parquet``. With ``keep`` (key columns), the rows of an existing table
    whose key ``frame`` does not have stay: comparisons of other pairs (``compare --b one-sided`` after
    ``--b gated``) accumulate in one table, and comparing a pair again replaces its rows."""
    out = Path(results) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.parquet"
    if keep and path.exists():
        old = read_parquet(path)
        if set(keep) <= set(old.columns):
            new_keys = set(frame[keep].astype(str).itertuples(index=False, name=None))
            stays = [k not in new_keys for k in old[keep].astype(str).itertuples(index=False, name=None)]
            frame = pd.concat([old[stays], frame], ignore_index=True)
    atomic_write(path, lambda p: frame.to_parquet(p, index=False), flag="--results")
    return path
