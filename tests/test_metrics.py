import math

import numpy as np
import pytest
import torch

from sagsae_cli.metrics import (
    R2,
    Census,
    axis_coverage,
    axis_recovery,
    census_summary,
    dead_reduction,
    fired,
    l0,
    latents_per_axis,
    pareto_verdict,
    r2,
)


def test_r2_hand_cases():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    # mean (2, 1); SST = (1+1) + (1+1) = 4; SSE of predicting the mean is 4 -> R² = 0
    assert r2(x, x.mean(0).expand_as(x)) == pytest.approx(0.0)
    assert r2(x, x) == 1.0
    assert r2(x, torch.zeros_like(x)) == pytest.approx(1 - 14 / 4)
    acc = R2()  # pooled over batches = one big batch
    acc.update(x[:1], x[:1] * 0)
    acc.update(x[1:], x[1:] * 0)
    assert acc.value() == pytest.approx(1 - 14 / 4)
    assert math.isnan(r2(torch.ones(3, 2), torch.ones(3, 2)))  # constant input: R² undefined


def test_l0_dead_and_signed_latents():
    f = torch.tensor([[0.5, -1.0, 0.0], [0.0, -2.0, 0.0]])
    assert l0(f) == 1.5
    assert fired(f).tolist() == [True, True, False]
    assert l0(torch.zeros(4, 3)) == 0 and not fired(torch.zeros(4, 3)).any()  # all dead


def test_census_counts_and_summary():
    f = torch.tensor(
        [[1.0, 2.0, 0.0, -1.0], [-1.0, 3.0, 0.0, -1.0], [2.0, 1.0, 0.0, -1.0], [-0.5, 1.0, 0.0, 0.0]]
    )
    c = Census(4)
    c.update(f[:2])
    c.update(f[2:])
    t = c.table()
    assert t["n_pos"].tolist() == [2, 4, 0, 0] and t["n_neg"].tolist() == [2, 0, 0, 3]
    assert t["mass_pos"].tolist() == [3.0, 7.0, 0.0, 0.0] and t["mass_neg"].tolist() == [1.5, 0.0, 0.0, 3.0]
    assert t["minority_share"].tolist() == [0.5, 0.0, 0.0, 0.0]
    s = census_summary(t, threshold=0.1)
    assert s["live"] == 3 and s["bipolar"] == 1 and s["bipolar_frac"] == pytest.approx(1 / 3)
    assert s["bipolar_mass_top1"] == 1.0  # all minority mass sits in latent 0


def test_axis_recovery_and_latents_per_axis():
    axes = torch.eye(3)
    w = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0.6, 0.8], [0, 0, 1.0]])
    assert axis_recovery(w, axes) == pytest.approx((1 + 0.6 + 1) / 3)
    assert latents_per_axis(w, axes) == pytest.approx((2 + 0 + 1) / 3)
    live = torch.tensor([True, False, True, True])
    assert latents_per_axis(w, axes, live) == pytest.approx((1 + 0 + 1) / 3)


def test_axis_coverage_counts_covered_merged_and_stray():
    axes = torch.eye(4)
    h = 1 / math.sqrt(2)
    w = torch.tensor(
        [
            [-1.0, 0, 0, 0],  # covers axis 0 (a negative row counts: |cos|)
            [0, h, h, 0],  # between axes 1 and 2, |cos| 0.71 with both: merged
            [0, 0.5, 0, 0.5],  # |cos| 0.71 with axes 1 and 3 only when normalised: merged too
            [0.1, 0.2, 0.3, 0.4],  # best |cos| 0.73, second 0.55: stray
            [0, 0, 0, 1.0],  # would cover axis 3, but dead
        ]
    )
    live = torch.tensor([True, True, True, True, False])
    c = axis_coverage(w, axes, live, paired=torch.tensor([True, False, False, True]))
    assert c == {"covered": 1, "uncovered": 3, "merged": 2, "stray": 1, "dead": 1, "paired_covered": 1}
    c = axis_coverage(w, axes, torch.ones(5, dtype=torch.bool))
    assert (c["covered"], c["uncovered"], c["dead"]) == (2, 2, 0) and "paired_covered" not in c


def test_pareto_dominating_crossing_disjoint():
    l0 = [10, 20, 40, 80]
    v = pareto_verdict(l0, [0.8, 0.85, 0.9, 0.95], l0, [0.7, 0.8, 0.85, 0.9])
    assert v["dominates"] and v["worst_gap"] == 0 and v["max_abs_gap"] == pytest.approx(0.1)
    v = pareto_verdict(l0, [0.8, 0.85, 0.9, 0.91], l0, [0.7, 0.8, 0.85, 0.95])
    assert not v["dominates"] and v["worst_gap"] == pytest.approx(-0.04)
    v = pareto_verdict([5, 30], [0.5, 0.9], [20, 100], [0.8, 0.95])
    assert v["overlap_lo"] == 20 and v["overlap_hi"] == 30
    expected_a_at_20 = 0.5 + 0.4 * np.log(20 / 5) / np.log(30 / 5)
    assert v["worst_gap"] == pytest.approx(min(0, expected_a_at_20 - 0.8), abs=1e-3)
    v = pareto_verdict([1, 2], [0.1, 0.2], [5, 6], [0.5, 0.6])
    assert v["overlap"] is False and v["dominates"] is None


def test_dead_reduction():
    l0 = [16, 64, 256]
    out = dead_reduction(l0, [0.0, 0.0, 0.0], 100, l0, [0.5, 0.4, 0.3], 200, matched_l0=64)
    assert out["dead_cut_at_l0"] == pytest.approx(0.4)
    # one floor 1/max(100, 200) = 0.005 on both sides: (0.5 + 0.005) / 0.005 = 101 and
    # (0.3 + 0.005) / 0.005 = 61 at the ends; the geomean lies between
    assert 61 < out["dead_ratio_geomean"] < 101
    # neither side has a dead latent: 1x, although B is twice as wide (the old floors said 0.5x)
    assert dead_reduction(l0, [0.0] * 3, 100, l0, [0.0] * 3, 200)["dead_ratio_geomean"] == pytest.approx(1.0)
    assert math.isnan(dead_reduction(l0, [0] * 3, 10, l0, [0] * 3, 10, matched_l0=1000)["dead_cut_at_l0"])


def test_bipolar_mass_ranks_live_latents_only():
    import pandas as pd

    # 10 live latents (minority masses 10, 1, ..., 1) and 10 dead ones: the top 10% of the live
    # latents is one latent holding 10 / 19 of the minority mass (ranking all 20 would take two)
    mass = [10.0] + [1.0] * 9 + [0.0] * 10
    t = pd.DataFrame({"n_pos": [5] * 10 + [0] * 10, "n_neg": [5] * 10 + [0] * 10, "mass_pos": mass,
                      "mass_neg": mass, "minority_share": [0.5] * 10 + [0.0] * 10})  # fmt: skip
    assert census_summary(t)["bipolar_mass_top10"] == pytest.approx(10 / 19)


def test_spectrum_of_rows_with_known_variances():
    """Rows +-a_i e_i (mean zero) have covariance eigenvalues proportional to a_i^2: with a = (2, 1, 1, 1)
    in d = 6 the shares are 4/7, 1/7, 1/7, 1/7, so 1 component holds 50%, 4 hold 90% and 99%, and the
    participation ratio is (4+1+1+1)^2 / (16+1+1+1) = 49/19; a rotation changes none of it."""
    from sagsae_cli.metrics import spectrum

    a = torch.tensor([2.0, 1.0, 1.0, 1.0])
    rows = torch.cat([torch.diag(a), -torch.diag(a)])
    x = torch.cat([rows, torch.zeros(8, 2)], 1)  # d = 6, two unused dimensions
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for rows_ in (x, (x.double() @ q).float() + 3.0):  # rotated and shifted: the same spectrum
        s = spectrum(rows_)
        assert (s["dims_50"], s["dims_90"], s["dims_99"]) == (1, 4, 4)
        assert s["participation_ratio"] == pytest.approx(49 / 19, rel=1e-5)
        assert s["top1_share"] == pytest.approx(4 / 7, rel=1e-5)
    iso = spectrum(torch.cat([torch.eye(5), -torch.eye(5)]))
    assert iso["participation_ratio"] == pytest.approx(5.0) and iso["dims_99"] == 5
    with pytest.raises(ValueError):
        spectrum(torch.ones(4, 3))


def test_tokens_to_converge_on_a_hand_made_history():
    from sagsae_cli.metrics import tokens_to_converge

    tokens = [100, 200, 300, 400, 500, 600]
    r2 = [0.50, 0.80, 0.897, 0.90, 0.899, 0.90]  # within 0.005 of 0.90 from 300 on
    l0 = [50.0, 20.0, 12.0, 10.5, 10.2, 10.0]  # within 10% of 10 from 400 on (12 is 20% off)
    assert tokens_to_converge(tokens, r2, l0) == 400
    # a late excursion resets the clock: R² drops out of the band at 500
    assert tokens_to_converge(tokens, [0.5, 0.8, 0.9, 0.9, 0.8, 0.9], [10.0] * 6) == 600
    # already converged at the first point; order of points does not matter
    assert tokens_to_converge([300, 100, 200], [0.9, 0.9, 0.9], [5, 5, 5]) == 100
    assert math.isnan(tokens_to_converge([], [], []))


def test_tokens_to_objective_on_a_hand_made_history():
    from sagsae_cli.metrics import tokens_to_converge, tokens_to_objective

    tokens = [100, 200, 300, 400, 500]
    objective = [2.0, 1.2, 1.015, 0.995, 1.0]  # 1.5% off at 300, within 1% of the final 1.0 from 400 on
    assert tokens_to_objective(tokens, objective) == 400
    assert tokens_to_objective(tokens, objective, rel_tol=0.02) == 300
    # a run that keeps sparsifying at a settled objective: converged by it, not by R² and L0
    l0, r2 = [20.0, 16.0, 13.0, 12.0, 10.0], [0.95] * 5  # L0 within 10% of 10 only at 500
    assert tokens_to_objective(tokens, [1.0] * 5) == 100 and tokens_to_converge(tokens, r2, l0) == 500
    # a late excursion resets the clock; the order of points does not matter; a negative final value
    assert tokens_to_objective(tokens, [1.0, 1.0, 1.0, 1.1, 1.0]) == 500
    assert tokens_to_objective([300, 100, 200], [-2.0, -3.0, -2.01]) == 200
    assert math.isnan(tokens_to_objective([], []))
    assert math.isnan(tokens_to_objective(tokens, [1.0, float("nan"), 1.0, 1.0, 1.0]))  # not recorded


def test_last_stretch_is_what_the_final_stretch_changed():
    from sagsae_cli.metrics import last_stretch

    # points out of order: the last two in tokens are 400 (R² 0.90, objective 1.05) and 500 (0.92, 1.0)
    dr2, dobj = last_stretch([500, 100, 400], [0.92, 0.5, 0.90], [1.0, 3.0, 1.05])
    assert dr2 == pytest.approx(0.02) and dobj == pytest.approx(0.05)
    assert all(math.isnan(v) for v in last_stretch([100], [0.9], [1.0]))
    assert math.isnan(last_stretch([1, 2], [0.8, 0.9], [float("nan"), 1.0])[1])


def test_tokens_on_frontier_counts_moving_along_the_frontier_as_converged():
    from sagsae_cli.metrics import tokens_on_frontier, tokens_to_converge

    # the sweep's final frontier: (L0 5, R² 0.80) and (L0 10, R² 0.90), linear in log L0
    front_l0, front_r2 = [10.0, 5.0], [0.90, 0.80]
    tokens = [100, 200, 300, 400]
    l0 = [8.0, 7.0, 6.0, 5.0]  # sparsifies to the end: L0 within 10% of 5 only at 400
    # the frontier at L0 8, 7, 6: 0.8 + 0.1 log2(L0 / 5) = 0.8678, 0.8485, 0.8263
    r2 = [0.84, 0.85, 0.83, 0.80]  # 0.028 below it at 8, on or above it from 7 on
    assert tokens_to_converge(tokens, r2, l0) == 400
    assert tokens_on_frontier(tokens, r2, l0, front_l0, front_r2) == 200
    # an excursion below the frontier resets the clock; so does an L0 outside its range (+-10%)
    assert tokens_on_frontier(tokens, [0.85, 0.85, 0.81, 0.80], l0, front_l0, front_r2) == 400
    assert (
        tokens_on_frontier(tokens, [0.95, 0.95, 0.83, 0.8], [12.0, 10.9, 6.0, 5.0], front_l0, front_r2) == 200
    )
    assert tokens_on_frontier(tokens, r2, [8.0, 7.0, 4.4, 5.0], front_l0, front_r2) == 400
    assert math.isnan(tokens_on_frontier(tokens, r2, l0, [], []))
    assert math.isnan(tokens_on_frontier(tokens, [0.84, 0.85, 0.83, 0.70], l0, front_l0, front_r2))


def test_convergence_and_gap_by_tokens_from_tables():
    import pandas as pd

    from sagsae_cli.compare import convergence, gap_by_tokens

    rows = []
    for variant, width, r2s in (("sa-gsae", 8, [0.5, 0.8, 0.9]), ("gated", 16, [0.85, 0.9, 0.9])):
        for l1, l0_ in ((0.1, 8.0), (0.4, 2.0)):
            for t, r in zip((100, 200, 300), r2s):
                rows.append({"model": "m", "hook": "h", "variant": variant, "width": width, "l1": l1, "k": 0,
                             "target_l0": 0.0, "seed": 0, "run": f"{variant}-{l1}", "run_dir": f"/r/{variant}-{l1}",
                             "tokens": t, "r2": r - (0.1 if l1 == 0.4 else 0), "l0": l0_, "dead_frac": 0.0,
                             "bipolar_frac": 0.0})  # fmt: skip
    table = pd.DataFrame(rows)
    snaps, final = table[table.tokens < 300], table[table.tokens == 300]
    conv = convergence(snaps, final).set_index("run")
    assert (
        conv.loc["sa-gsae-0.1", "tokens_to_converge"] == 300
        and conv.loc["gated-0.1", "tokens_to_converge"] == 200
    )
    assert conv.finished.all() and (conv.tokens_final == 300).all()
    # each sweep's frontier is its two final points; these runs never change L0, so both definitions agree
    assert (conv.tokens_on_frontier == conv.tokens_to_converge).all() and (conv.sweep_points == 2).all()
    assert conv.tokens_to_objective.isna().all()  # tables from before eval recorded the objective
    with_objective = table.assign(objective=1.0 - table.r2)  # settles with R² here: 300 and 200 tokens
    conv = convergence(with_objective[table.tokens < 300], with_objective[table.tokens == 300]).set_index(
        "run"
    )
    assert (conv.tokens_to_objective == conv.tokens_to_converge).all()
    # the final stretch (200 -> 300 tokens): sa-gsae gains 0.1 R², its objective 1 - r2 drops 0.1 / its final
    assert conv.r2_last_stretch.to_dict() == pytest.approx({"sa-gsae-0.1": 0.1, "sa-gsae-0.4": 0.1,
                                                            "gated-0.1": 0.0, "gated-0.4": 0.0})  # fmt: skip
    assert conv.loc["sa-gsae-0.1", "objective_last_stretch"] == pytest.approx(0.2 / 0.1 - 1)
    gaps = gap_by_tokens(snaps, final, matched_l0=4).set_index("tokens")
    # SA - Gated at equal L0: -0.35, -0.10, 0.0 at 100, 200, 300 tokens
    assert gaps.worst_gap.to_dict() == pytest.approx({100: -0.35, 200: -0.10, 300: 0.0})


def test_target_l0_seeds_pool_into_one_point():
    """Two seeds of a target-L0 run end with different adapted λ (l1_final) but one requested l1 and
    one target: the comparison sees one point per target, the seed mean."""
    import pandas as pd

    from sagsae_cli.compare import compare, seed_means

    rows = []
    for variant, width, r2_ in (("sa-gsae", 8, 0.8), ("gated", 16, 0.7)):
        for target in (4.0, 16.0):
            for seed, adapted in ((0, 0.31), (1, 0.47)):
                rows.append({"model": "m", "hook": "h", "variant": variant, "width": width, "l1": 0.4,
                             "l1_final": adapted * (1 + seed), "target_l0": target, "k": 0, "seed": seed,
                             "l0": target * (1 + 0.01 * seed), "r2": r2_ + 0.01 * seed + 0.02 * (target == 16),
                             "dead_frac": 0.0, "bipolar_frac": 0.0})  # fmt: skip
    points = seed_means(pd.DataFrame(rows))
    assert len(points) == 4 and (points.seeds == 2).all()
    verdict = compare(pd.DataFrame(rows), matched_l0=8).iloc[0]
    assert verdict.dominates and verdict.points_a == 2


def test_two_runs_of_one_seed_in_a_table_are_refused_not_averaged():
    """Runs of the same variant, width, coefficient and seed from two --out directories (another
    setting, e.g. Adam beta1) evaluated into one --results: seed means must not average them."""
    import pandas as pd

    from sagsae_cli.compare import compare, seed_means
    from sagsae_cli.errors import SagsaeError

    rows = []
    for out, r2_ in (("runs", 0.7), ("runs-beta09", 0.8)):
        for variant, width in (("sa-gsae", 8), ("gated", 16)):
            for l1, l0_ in ((0.1, 8.0), (0.4, 2.0)):
                rows.append({"model": "m", "hook": "h", "variant": variant, "width": width, "l1": l1, "k": 0,
                             "target_l0": 0.0, "seed": 0, "run_dir": f"/x/{out}/{variant}-{l1}", "l0": l0_,
                             "r2": r2_, "dead_frac": 0.0, "bipolar_frac": 0.0})  # fmt: skip
    table = pd.DataFrame(rows)
    with pytest.raises(SagsaeError, match=r"2 different runs of .*seed 0 \(/x/runs-beta09/.*, /x/runs/"):
        compare(table, matched_l0=4)
    one = table[table.run_dir.str.startswith("/x/runs/")]
    assert len(seed_means(one)) == 4 and compare(one, matched_l0=4).iloc[0].worst_gap == 0.0
    # two seeds of one run configuration are what seed means are for
    two_seeds = pd.concat([one, one.assign(seed=1, run_dir=one.run_dir + "-s1")])
    assert (seed_means(two_seeds).seeds == 2).all()


# --- the paper's criteria (compare) on hand-made frontiers ---------------------------------------------------
def _cell(points_by_seed):
    """An eval table from {(variant, width): {seed: [(l0, r2, dead), ...]}} (one cell)."""
    import pandas as pd

    rows = []
    for (variant, width), seeds in points_by_seed.items():
        for seed, points in seeds.items():
            for i, (l0_, r2_, dead) in enumerate(points):
                rows.append({"model": "m", "hook": "mlp_out", "variant": variant, "width": width, "l1": 0.1 * 2**i,
                             "target_l0": 0.0, "k": 0, "seed": seed, "l0": l0_, "r2": r2_, "dead_frac": dead,
                             "bipolar_frac": 0.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_dominance_that_fails_at_one_end_names_where():
    """A is above B at low L0 and crosses below it near the top of the shared range: not dominant, and
    the L0 where it fails lies in that top part (the crossing point is solved by hand in log L0)."""
    from sagsae_cli.compare import compare

    l0 = [10.0, 100.0]
    # A - B = 0.02 at L0 10 and -0.01 at L0 100, linear in log L0: zero at log10(L0) = 1 + 2/3
    table = _cell({("sa-gsae", 8): {0: [(10, 0.72, 0.0), (100, 0.89, 0.0)]},
                   ("gated", 16): {0: [(10, 0.70, 0.2), (100, 0.90, 0.2)]}})  # fmt: skip
    row = compare(table).iloc[0]
    assert not row.dominates and row.worst_gap == pytest.approx(-0.01)
    assert row.fail_l0 == pytest.approx(100.0)
    assert row.fail_lo == pytest.approx(10 ** (1 + 2 / 3), rel=0.02) and row.fail_hi == pytest.approx(100.0)
    assert row.within_band and row.paper_verdict != "dominates"
    assert (row.overlap_lo, row.overlap_hi) == tuple(l0)


def test_dead_cut_with_no_dead_latents_on_one_side_matches_inside_the_cells_overlap():
    """Without --matched-l0 the cut is taken at the geometric middle of the cell's own L0 overlap (here
    10-40: 20), not at a fixed L0 outside it; A has no dead latent, so the cut is B's dead fraction there."""
    from sagsae_cli.compare import compare

    table = _cell({("sa-gsae", 8): {0: [(5, 0.6, 0.0), (40, 0.9, 0.0)]},
                   ("gated", 16): {0: [(10, 0.5, 0.6), (80, 0.8, 0.3)]}})  # fmt: skip
    row = compare(table).iloc[0]
    assert row.matched_l0 == pytest.approx(20.0)
    # B's dead fraction at L0 20, linear in log L0 between (10, 0.6) and (80, 0.3): 0.6 - 0.3 / 3
    assert row.dead_cut_at_l0 == pytest.approx(0.5)
    assert row.dominates and row.paper_verdict == "dominates"
    # at an L0 outside the overlap there is no cut (NaN), and a cut below 0.35 is no match
    assert math.isnan(compare(table, matched_l0=64).iloc[0].dead_cut_at_l0)


def test_a_verdict_that_flips_between_seeds_is_reported_per_seed():
    """Seed 0 dominates, seed 1 falls 0.03 below at high L0: the seed means and each seed get their own
    verdict, and 'every seed' says no."""
    from sagsae_cli.compare import compare, paper_verdict, seed_rows

    b = [(10, 0.70, 0.5), (100, 0.90, 0.5)]
    table = _cell({("sa-gsae", 8): {0: [(10, 0.75, 0.0), (100, 0.93, 0.0)], 1: [(10, 0.75, 0.0), (100, 0.87, 0.0)]},
                   ("gated", 16): {0: b, 1: b}})  # fmt: skip
    row = compare(table).iloc[0]
    assert row.seeds == 2 and row.dominates  # the means: 0.75 / 0.90 against 0.70 / 0.90
    assert row.dominates_every_seed is False or not row.dominates_every_seed
    assert not row.verdict_every_seed and row.worst_gap_seed_min == pytest.approx(-0.03)
    per = seed_rows(table).set_index("seed")
    assert per.loc[0].dominates and not per.loc[1].dominates
    assert per.loc[1].paper_verdict == "outside 0.025" and per.loc[0].paper_verdict == "dominates"
    # the paper's matching bar: gap >= -0.008 and a cut >= 0.35 absolute; the band alone is weaker
    assert paper_verdict(False, -0.007, 0.4) == "matches"
    assert paper_verdict(False, -0.007, 0.3) == "within 0.025"
    assert paper_verdict(False, -0.02, 0.6) == "within 0.025"
    assert paper_verdict(False, -0.03, 0.6) == "outside 0.025"
