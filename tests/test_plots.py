import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli


@pytest.fixture
def results(tmp_path):
    """A small results fixture: two cells x (sa-gsae@8, gated@16) x 3 coefficients x 2 seeds."""
    rng = np.random.default_rng(0)
    (tmp_path / "eval").mkdir()
    (tmp_path / "census").mkdir()
    for hook in ("resid_mid", "mlp_out"):
        for variant, width, shift in (("sa-gsae", 8, 0.02), ("gated", 16, 0.0)):
            for l1 in (0.1, 0.2, 0.4):
                for seed in (0, 1):
                    run = f"{variant}-w{width}-l1_{l1:g}-s{seed}-{hook}"
                    l0 = 8 / l1**0.5 * (1.1 if variant == "gated" else 1.0)
                    row = dict(run=run, variant=variant, width=width, l1=l1, k=0, seed=seed, model="tiny", hook=hook,
                               l0=l0, r2=0.9 - 0.1 * l1 + shift + 0.005 * seed, dead_frac=0.3 if variant == "gated" else 0.01,
                               bipolar_frac=0.5 if variant == "sa-gsae" else 0.0, eval_tokens=1000, bipolar_threshold=0.1)  # fmt: skip
                    row.update(run_dir=f"/runs/{hook}/{run}", tokens=300, final=True, objective=1.0)
                    pd.DataFrame([row]).to_parquet(tmp_path / "eval" / f"{run}.parquet")
                    for t, lag in ((100, 0.2), (200, 0.05)):  # snapshots: SA-GSAE converges later
                        snap = {**row, "tokens": t, "final": False, "l0": l0 * (1 + lag),
                                "r2": row["r2"] - lag * (2 if variant == "sa-gsae" else 1),
                                "objective": 1.0 + lag * (1 if variant == "sa-gsae" else 0.1)}  # fmt: skip
                        (tmp_path / "checkpoints").mkdir(exist_ok=True)
                        pd.DataFrame([snap]).to_parquet(tmp_path / "checkpoints" / f"{run}-t{t}.parquet")
                    n = rng.integers(0, 50, size=(width, 2))
                    pd.DataFrame({"run": run, "latent": range(width), "n_pos": n[:, 0], "n_neg": n[:, 1],
                                  "mass_pos": n[:, 0] * 1.0, "mass_neg": n[:, 1] * 0.5,
                                  "minority_share": n.min(1) / n.sum(1).clip(1)}).to_parquet(tmp_path / "census" / f"{run}.parquet")  # fmt: skip
    return tmp_path


def non_blank(path):
    img = mpimg.imread(path)
    return img.std() > 0.01 and (img[..., :3] < 0.9).mean() > 0.005


def test_compare_verdict_from_the_table(results):
    p = run_cli("compare", "--results", results, "--matched-l0", 20, check=0)
    out = p.stdout + p.stderr
    assert "dominates" in out and "the paper, mlp_out" in out
    table = pd.read_parquet(results / "compare" / "compare.parquet")
    assert set(table.hook) == {"resid_mid", "mlp_out"} and table.dominates.all()
    assert (table.paper_verdict == "dominates").all() and table.paper.str.len().gt(0).all()
    seeds = pd.read_parquet(results / "compare" / "compare_seeds.parquet")
    assert set(seeds.hook) == {"resid_mid", "mlp_out"} and len(seeds) == len(table) * table.seeds.iloc[0]
    assert table.dead_cut_at_l0.tolist() == pytest.approx([0.29, 0.29])


@pytest.mark.parametrize("name", ["pareto", "dead", "census", "convergence"])
def test_every_plot_is_non_blank(results, tmp_path, name):
    run_cli("compare", "--results", results, check=0)
    run_cli("plot", name, "--results", results, "--out", tmp_path / "fig", check=0)
    assert non_blank(tmp_path / "fig" / f"{name}.png")
    assert (tmp_path / "fig" / f"{name}.pdf").stat().st_size > 1000


def test_compare_reports_convergence(results):
    p = run_cli("compare", "--results", results, "--matched-l0", 20, check=0)
    assert "convergence" in p.stdout + p.stderr and "worst gap by tokens" in p.stdout + p.stderr
    conv = pd.read_parquet(results / "compare" / "convergence.parquet")
    assert len(conv) == 24 and conv.finished.all()
    assert "frontier" in p.stdout + p.stderr and conv.tokens_on_frontier.notna().all()
    assert (conv.tokens_on_frontier <= conv.tokens_final).all()
    # the objective: 0.5% above its final value at 200 for the Gated SAE (within 1%), 5% for SA-GSAE
    assert conv.groupby("variant").tokens_to_objective.agg(set).to_dict() == {
        "gated": {200},
        "sa-gsae": {300},
    }
    assert "objective" in p.stdout + p.stderr
    gaps = pd.read_parquet(results / "compare" / "gap_by_tokens.parquet")
    assert sorted(set(gaps.tokens)) == [100, 200, 300]


def test_compare_at_another_width_ratio(results):
    """--width-ratio 1 pairs A@H with B@H; the default 2 keeps the paper's B@2H."""
    from sagsae_cli.compare import compare

    rows = []
    for variant, width, shift in (("sa-gsae", 8, 0.0), ("gated", 8, -0.01), ("gated", 16, 0.03)):
        for l1, l0 in ((0.1, 40.0), (0.2, 20.0), (0.4, 10.0)):
            rows.append(dict(model="m", hook="h", variant=variant, width=width, l1=l1, target_l0=0.0, k=0, seed=0,
                             l0=l0, r2=0.9 - l1 / 4 + shift, dead_frac=0.0, bipolar_frac=0.0,
                             run_dir=f"/r/{variant}-{width}-{l1}"))  # fmt: skip
    table = pd.DataFrame(rows)
    same = compare(table, ratio=1).iloc[0]
    assert (same.a, same.b, bool(same.dominates)) == ("sa-gsae@8", "gated@8", True)
    assert same.max_abs_gap == pytest.approx(0.01)
    paper = compare(table).iloc[0]
    assert (paper.b, bool(paper.dominates), paper.worst_gap) == ("gated@16", False, pytest.approx(-0.03))
    # the fixture has no gated at H: one line, exit 2
    p = run_cli("compare", "--results", results, "--width-ratio", 1, check=2)
    assert "sa-gsae at width H and gated at H" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("compare", "--results", results, "--width-ratio", 0, check=2)
    assert "--width-ratio must be a whole number >= 1" in p.stderr


def test_compare_tables_keep_every_pair(tmp_path):
    """Comparing another pair adds its rows to results/compare/compare.parquet; comparing a pair again
    replaces its rows; a damaged table is one line and stays as it was."""
    from sagsae_cli.compare import PAIR_KEYS, write_compare
    from sagsae_cli.errors import SagsaeError

    def row(b, gap):
        return pd.DataFrame([dict(model="m", hook="h", a="sa-gsae@8", b=b, worst_gap=gap)])

    path = write_compare(row("gated@16", -0.03), tmp_path, keep=PAIR_KEYS)
    write_compare(row("gated@8", 0.01), tmp_path, keep=PAIR_KEYS)
    write_compare(row("gated@16", -0.02), tmp_path, keep=PAIR_KEYS)
    table = pd.read_parquet(path)
    assert sorted(zip(table.b, table.worst_gap)) == [("gated@16", -0.02), ("gated@8", 0.01)]
    path.write_bytes(b"not parquet")
    with pytest.raises(SagsaeError, match="not a readable table"):
        write_compare(row("gated@8", 0.0), tmp_path, keep=PAIR_KEYS)
    assert path.read_bytes() == b"not parquet"


def test_ablation_table_keeps_earlier_seeds(tmp_path, monkeypatch, capsys):
    """`ablate --seeds 1` after `--seeds 0` holds both seeds, deltas against the tied mean over both;
    a grid at another coefficient replaces the table with a note; a damaged table is one line."""
    import sagsae_cli.ablate as ab
    from sagsae_cli.errors import SagsaeError
    from sagsae_cli.recipe import TrainConfig

    def fake_evaluate(dirs, results, **_):  # r2 = 0.5 + seed/10 + 0.01 per non-tied variant, by hand
        rows = []
        for d in dirs:
            v, w, l1, s = d.split("|")
            rows.append(dict(run=f"{v}-w{w}-l1_{l1}-s{s}", variant=v, width=int(w), l1=float(l1), target_l0=0.0,
                             tokens=1000, eval_tokens=100, seed=int(s), l0=4.0, dead_frac=0.0,
                             r2=0.5 + int(s) / 10 + (0 if v == "sa-gsae" else 0.01)))  # fmt: skip
        return pd.DataFrame(rows)

    monkeypatch.setattr(
        ab, "train", lambda cfgs, *a, **k: [f"{c.variant}|{c.width}|{c.l1:g}|{c.seed}" for c in cfgs]
    )
    monkeypatch.setattr(ab, "evaluate", fake_evaluate)
    base = TrainConfig(width=8, l1=0.4, tokens=1000, store=str(tmp_path / "store"))
    res = tmp_path / "res"
    path = res / "ablation" / "store-w8.parquet"
    ab.ablate(base, [0], "runs", res, 100)
    ab.ablate(base, [1], "runs", res, 100)
    t = pd.read_parquet(path)
    assert sorted(t.seed.unique()) == [0, 1] and len(t) == 14 and t.run.is_unique
    gated = t[(t.label == "gated@16") & (t.seed == 1)].iloc[0]
    assert gated.delta_r2 == pytest.approx((0.6 + 0.01) - (0.5 + 0.6) / 2)  # tied mean over both seeds
    ab.ablate(base, [1], "runs", res, 100)  # the same seed again: replaced, not doubled
    assert len(pd.read_parquet(path)) == 14
    ab.ablate(replace(base, l1=0.2), [0], "runs", res, 100)
    t = pd.read_parquet(path)
    assert set(t.l1) == {0.2} and len(t) == 7 and "another setting" in capsys.readouterr().err
    path.write_bytes(b"not parquet")
    with pytest.raises(SagsaeError, match="not a readable table"):
        ab.ablate(base, [0], "runs", res, 100)
    assert path.read_bytes() == b"not parquet"


def test_unknown_plot_and_empty_table(results, tmp_path):
    from sagsae_cli.cli import PLOT_NAMES
    from sagsae_cli.plots import PLOTS

    assert set(PLOT_NAMES) == {
        *PLOTS,
        "training",
        "budgets",
    }  # the help and the error list exactly the registry
    p = run_cli("plot", "violin", "--results", results, check=2)
    assert "unknown plot 'violin'" in p.stderr and all(n in p.stderr for n in PLOT_NAMES)
    p = run_cli("plot", "pareto", "--results", tmp_path / "nothing", check=2)
    assert "empty" in p.stderr and "Traceback" not in p.stderr


def test_ablate_end_to_end_then_plots(tmp_path):
    """The whole chain on a small synthetic store: harvest -> ablate (train + eval) -> compare -> plots."""
    run_cli("harvest", "--source", "synthetic", "--out", tmp_path / "s", "--tokens", 60_000, "--eval-tokens", 5000,
            "--quiet", check=0)  # fmt: skip
    p = run_cli("ablate", "--store", tmp_path / "s", "--width", 24, "--tokens", 80_000, "--batch", 1000,
                "--lr", 2e-3, "--out", tmp_path / "runs", "--results", tmp_path / "res", "--quiet", check=0)  # fmt: skip
    assert "gated@48" in p.stderr + p.stdout
    table = pd.read_parquet(tmp_path / "res" / "ablation" / "s-w24.parquet")
    assert set(table.label) == {"sa-gsae@24", "sa-gsae-untied@24", "no-aux@24", "one-sided@24", "no-reset@24",
                                "gated@24", "gated@48"}  # fmt: skip
    # deltas against the tied default, recomputed from the eval table itself (not the ablation code)
    from sagsae_cli.evaluate import read_table

    ev = read_table(tmp_path / "res")
    r2 = {(v, w): g.r2.mean() for (v, w), g in ev.groupby(["variant", "width"])}
    for label, v, w in (("no-aux@24", "no-aux", 24), ("gated@48", "gated", 48)):
        delta = table.loc[table.label == label, "delta_r2"].iloc[0]
        assert delta == pytest.approx(r2[(v, w)] - r2[("sa-gsae", 24)]) and delta != 0
    run_cli("compare", "--results", tmp_path / "res", check=0)
    for name in ("pareto", "dead", "census", "ablation"):
        run_cli("plot", name, "--results", tmp_path / "res", "--out", tmp_path / "fig", check=0)
        assert non_blank(tmp_path / "fig" / f"{name}.png"), name
    run_cli(
        "plot",
        "training",
        "--run",
        tmp_path / "runs" / "sa-gsae-w24-l1_0.4-s0",
        "--out",
        tmp_path / "fig",
        check=0,
    )
    assert non_blank(tmp_path / "fig" / "training.png")
    table = subprocess.run([sys.executable, "examples/results_table.py", str(tmp_path / "res")], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).parents[1]).stdout  # fmt: skip
    assert (
        "ablation s-w24" in table
        and "| no-aux@24 |" in table
        and "| hook | variant | width | l1 | seeds |" in table
    )


@pytest.mark.parametrize("lo, hi", [(1.8, 2.9), (3.0, 80.0)])
def test_l0_axis_labels_at_least_three_ticks(lo, hi):
    """A narrow L0 range (1.8-2.9 holds one 1-2-5 tick) still gets several labelled ticks inside it."""
    import matplotlib.pyplot as plt

    from sagsae_cli.plots import _log_l0_axis

    fig, ax = plt.subplots()
    ax.plot([lo, hi], [0, 1])
    _log_l0_axis(ax)
    fig.canvas.draw()
    labelled = [
        t.get_text()
        for t in ax.get_xticklabels(which="both")
        if t.get_text() and lo <= float(t.get_text()) <= hi
    ]
    plt.close(fig)
    assert len(labelled) >= 3, labelled


def test_plot_budgets_draws_each_budget_of_one_seed(results, tmp_path, monkeypatch):
    """plot budgets over two results folders (the fixture, and a copy "trained longer": tokens ×10, R² + 0.05
    for the Gated SAE and + 0.01 for SA-GSAE, so the two budgets' worst gaps differ):
    per cell one line per (variant, width, budget) through that budget's final points of the chosen seed,
    the shorter budget paler, and the worst gap of each budget (compare's per-seed table) in the title;
    from the command line, a figure; one folder only, two at one budget, or a seed a budget lacks, is
    refused (exit 2)."""
    import shutil

    import sagsae_cli.plots as plots

    longer = tmp_path / "longer"
    shutil.copytree(results, longer)
    for f in (longer / "eval").glob("*.parquet"):
        t = pd.read_parquet(f)
        t.assign(tokens=t.tokens * 10, r2=t.r2 + t.variant.map({"gated": 0.05, "sa-gsae": 0.01})).to_parquet(
            f
        )
    for r in (results, longer):
        run_cli("compare", "--results", r, "--matched-l0", 20, check=0)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: figures.append(fig) or [])
    plots.plot_budgets([longer, results], tmp_path / "fig", seed=1)
    (fig,) = figures
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2  # two cells
    for ax in axes:
        hook = ax.get_title().split("\n")[0].split(" · ")[1]
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert len(lines) == 4  # (sa-gsae@8, gated@16) × (300, 3k tokens)
        for variant, width, label, gain_longer in (
            ("sa-gsae", 8, "SA-GSAE", 0.01),
            ("gated", 16, "Gated SAE", 0.05),
        ):
            for tokens, gain in ((300, 0.0), (3000, gain_longer)):
                (line,) = [v for k, v in lines.items() if k.startswith(label) and f"width {width}," in k
                           and k.endswith(f", {plots.tokens_label(tokens)}")]  # fmt: skip
                want = pd.read_parquet(results / "eval", filters=None)
                want = want[(want.hook == hook) & (want.variant == variant) & (want.seed == 1)].sort_values(
                    "l0"
                )
                assert line.get_xdata().tolist() == pytest.approx(want.l0.tolist())
                assert line.get_ydata().tolist() == pytest.approx((want.r2 + gain).tolist())
                assert line.get_alpha() == pytest.approx(0.3 if tokens == 300 else 1.0)
        gap = {}
        for r in (results, longer):
            g = pd.read_parquet(r / "compare" / "compare_seeds.parquet")
            gap[r] = g[(g.hook == hook) & (g.seed == 1)].worst_gap.iloc[0]
        assert gap[longer] < gap[results] - 0.01  # the longer copy's Gated SAE gained more
        assert ax.get_title().split("\n")[1] == f"worst gap: 300 {gap[results]:+.4f}, 3k {gap[longer]:+.4f}"
    run_cli("plot", "budgets", "--results", results, "--results", longer, "--out", tmp_path / "cli", check=0)
    assert non_blank(tmp_path / "cli" / "budgets.png")
    for args in (["--results", results], ["--results", results, "--results", results],
                 ["--results", results, "--results", longer, "--seed", 5]):  # fmt: skip
        p = run_cli("plot", "budgets", *args, "--out", tmp_path / "bad", check=2)
        assert "Traceback" not in p.stderr and not (tmp_path / "bad" / "budgets.png").exists()
