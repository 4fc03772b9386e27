import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted(Path(__file__).resolve().parents[1].joinpath("examples").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    p = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True,
                       cwd=SCRIPTS[0].parents[1])  # fmt: skip
    assert p.returncode == 0, p.stdout


def test_readme_opens_with_the_two_commands():
    readme = (SCRIPTS[0].parents[1] / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1 : readme.index("```bash") + 3]
    assert block[0].startswith("bash examples/quickstart.sh")
    assert "python -m pytest -q" in block[1]
    ci = (SCRIPTS[0].parents[1] / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci


def test_outlier_probe_replays_the_run_and_removes_only_large_tokens(tmp_path):
    """examples/outlier_probe.py on a tiny run: with nothing above --max-norm its two arms are the same
    replay (identical figures); with one row 25x the others' norm in the store, it finds that row's
    batch and the arm without it differs."""
    import ast
    import sys

    import numpy as np
    from conftest import run_cli

    from sagsae_cli.store import StoreWriter

    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "s", d=8, dtype="float32", config={"t": 1}, chunk_rows=256) as w:
        x = rng.normal(size=(3000, 8)).astype("float32")
        x[1234] *= 25.0
        w.append("train", x)
        w.append("eval", rng.normal(size=(500, 8)).astype("float32"))
        w.commit(complete=True)
    run_cli("train", "--store", tmp_path / "s", "--out", tmp_path / "r", "--variant", "sa-gsae", "--width", 16,
            "--tokens", 6000, "--batch", 100, "--snapshots", 2, "--quiet", check=0)  # fmt: skip
    snap = next((tmp_path / "r").iterdir()) / "checkpoints" / "tokens-0000000002000"  # step 20
    probe = Path(__file__).resolve().parents[1] / "examples" / "outlier_probe.py"

    def run(max_norm):
        p = subprocess.run([sys.executable, str(probe), str(tmp_path / "s"), str(snap), "--stop", "60",
                            "--at", "30,45", "--batch", "100", "--max-norm", str(max_norm), "--eval-rows", "500"],
                           capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        rows = [line.split() for line in p.stdout.splitlines() if line.strip()[:2].isdigit()]
        return p.stdout, {int(r[0]): (r[1:3], r[3:5]) for r in rows}

    out, arms = run(1e9)
    assert "above 1000000000.0: []" in out and sorted(arms) == [30, 45, 60]
    assert all(a == b for a, b in arms.values())  # nothing removed: the same replay twice
    out, arms = run(6.0)
    big = ast.literal_eval(out.split("above 6.0: ", 1)[1].splitlines()[0])  # [(step, norm), ...]
    assert len(big) >= 1 and all(20 <= s < 60 and n > 6.0 for s, n in big)  # the 25x row's batches
    assert any(a != b for a, b in arms.values())


def test_latent_churn_counts_silent_latents_as_eval_does(tmp_path):
    """examples/latent_churn.py on a tiny run with snapshots: its silent count at the end is `sagsae
    eval`'s dead fraction times the width on the same held-out rows, and from one snapshot to the next
    silent = silent before + died - back."""
    import sys

    import numpy as np
    import pandas as pd
    from conftest import run_cli

    from sagsae_cli.store import StoreWriter

    rng = np.random.default_rng(1)
    with StoreWriter(tmp_path / "s", d=8, dtype="float32", config={"t": 1}, chunk_rows=256) as w:
        w.append("train", rng.normal(size=(4000, 8)).astype("float32"))
        w.append("eval", rng.normal(size=(600, 8)).astype("float32"))
        w.commit(complete=True)
    run_cli("train", "--store", tmp_path / "s", "--out", tmp_path / "r", "--variant", "sa-gsae", "--width", 48,
            "--l1", 2.0, "--tokens", 12000, "--batch", 100, "--lr", 0.01, "--warmup-steps", 5, "--snapshots", 3,
            "--quiet", check=0)  # fmt: skip
    run = next((tmp_path / "r").iterdir())
    run_cli("eval", run, "--results", tmp_path / "res", "--eval-tokens", 600, "--quiet", check=0)
    dead = pd.read_parquet(next((tmp_path / "res" / "eval").glob("*.parquet"))).dead_frac.iloc[0]
    probe = Path(__file__).resolve().parents[1] / "examples" / "latent_churn.py"
    p = subprocess.run(
        [sys.executable, str(probe), str(run), "--eval-tokens", "600"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [
        line.split() for line in p.stdout.splitlines() if line.strip()[:1].isdigit() or "final" in line[:13]
    ]
    assert len(rows) == 4 and rows[-1][0] == "final"  # three snapshots, then the final SAE
    silent = [int(r[1]) for r in rows]
    assert silent[-1] == round(dead * 48) and 0 < silent[-1] < 48
    for before, r in zip(silent, rows[1:]):
        assert int(r[1]) == before + int(r[2]) - int(r[3])
    assert sum(int(r[2]) for r in rows[1:]) > 0 and sum(int(r[3]) for r in rows[1:]) > 0  # both happen here


def test_store_spectrum_reads_a_stores_dimension(tmp_path):
    """examples/store_spectrum.py on a store whose rows lie in a 3-dimensional subspace of d = 16 (with
    very different variances along it): at most 3 components for 99%, and a participation ratio
    between 1 and 3; bad input is one line and exit 2."""
    import sys

    import numpy as np

    from sagsae_cli.store import StoreWriter

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # 3 orthonormal rows in R^16
    rows = (rng.normal(size=(3000, 3)) * [3.0, 1.0, 0.3]) @ basis
    with StoreWriter(tmp_path / "s", d=16, dtype="float32", config={"t": 1}, chunk_rows=256) as w:
        w.append("train", rows[:2000].astype("float32"))
        w.append("eval", rows[2000:].astype("float32"))
        w.commit(complete=True)
    probe = Path(__file__).resolve().parents[1] / "examples" / "store_spectrum.py"
    p = subprocess.run([sys.executable, str(probe), str(tmp_path / "s"), "--rows", "800"], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    fields = p.stdout.splitlines()[-1].split()
    assert fields[1] == "800" and fields[2] == "16"
    dims50, dims90, dims99, pr = int(fields[3]), int(fields[4]), int(fields[5]), float(fields[6])
    assert dims50 == 1 and 1 <= dims90 <= dims99 <= 3 and 1.0 < pr < 3.0
    for bad in ([str(tmp_path / "nope")], [str(tmp_path / "s"), "--rows", "1"]):
        p = subprocess.run([sys.executable, str(probe), *bad], capture_output=True, text=True)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_axis_coverage_agrees_with_eval_on_a_synthetic_run(tmp_path):
    """examples/axis_coverage.py on a tiny synthetic run with snapshots: at the end its dead count is
    `sagsae eval`'s dead fraction times the width, its covered axes are no more than eval's latents
    per axis allow, covered + missing = the axes, for every snapshot; a store without ground truth is
    one line and exit 2."""
    import sys

    import numpy as np
    import pandas as pd
    from conftest import run_cli

    from sagsae_cli.store import StoreWriter

    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 8, "--tokens", 20000, "--eval-tokens", 2000,
            "--out", tmp_path / "s", "--quiet", check=0)  # fmt: skip
    train = ["--variant", "sa-gsae", "--width", 16, "--l1", 0.2, "--tokens", 20000, "--batch", 100, "--lr", 0.01,
             "--warmup-steps", 5, "--snapshots", 2, "--quiet"]  # fmt: skip
    run_cli("train", "--store", tmp_path / "s", "--out", tmp_path / "r", *train, check=0)
    run = next((tmp_path / "r").iterdir())
    run_cli("eval", run, "--results", tmp_path / "res", "--eval-tokens", 2000, "--quiet", check=0)
    row = pd.read_parquet(next((tmp_path / "res" / "eval").glob("*.parquet"))).iloc[0]
    probe = Path(__file__).resolve().parents[1] / "examples" / "axis_coverage.py"
    p = subprocess.run([sys.executable, str(probe), str(run), "--eval-tokens", "2000", "--plot", str(tmp_path / "fig")],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith(f"{run.name}: 8 axes")
    assert (tmp_path / "fig" / "axis_coverage.png").stat().st_size > 10_000  # a figure, not an empty file
    rows = [line.split() for line in p.stdout.splitlines()[2:] if not line.startswith("wrote")]
    assert len(rows) == 3 and rows[-1][0] == "final"  # two snapshots, then the final SAE
    for r in rows:
        covered, paired, missing, merged, stray, dead = map(int, r[1:])
        assert covered + missing == 8 and paired <= covered and merged + stray + dead <= 16
    covered, dead = int(rows[-1][1]), int(rows[-1][6])
    assert dead == round(row.dead_frac * 16)
    assert 0 < covered <= round(row.latents_per_axis * 8)
    # a store without ground truth
    rng = np.random.default_rng(1)
    with StoreWriter(tmp_path / "lm", d=16, dtype="float32", config={"t": 1}, chunk_rows=256) as w:
        w.append("train", rng.normal(size=(2000, 16)).astype("float32"))
        w.append("eval", rng.normal(size=(500, 16)).astype("float32"))
        w.commit(complete=True)
    run_cli("train", "--store", tmp_path / "lm", "--out", tmp_path / "r2", "--width", 16, "--tokens", 2000,
            "--batch", 100, "--snapshots", 0, "--quiet", check=0)  # fmt: skip
    p = subprocess.run([sys.executable, str(probe), str(next((tmp_path / "r2").iterdir()))], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 2 and "no ground truth" in p.stderr and "Traceback" not in p.stderr


def test_budget_delta_compares_final_points_of_two_budgets(tmp_path):
    """examples/budget_delta.py on two hand-made results folders: the objective's fall, the L0 ratio and
    the R² change per cell and variant, over the runs both budgets have (a run in one only is left out),
    and compare's convergence verdict at the shorter budget (finished runs only) beside the runs the
    longer budget moved by less than 1%."""
    import sys

    import pandas as pd

    def results(name, runs):
        (tmp_path / name / "eval").mkdir(parents=True)
        for i, (variant, l1, objective, r2, l0) in enumerate(runs):
            pd.DataFrame([{"model": "m", "hook": "mlp_out", "variant": variant, "width": 8, "l1": l1, "seed": 0,
                           "objective": objective, "r2": r2, "l0": l0, "eval_tokens": 100}]).to_parquet(
                tmp_path / name / "eval" / f"{i}.parquet")  # fmt: skip
        return str(tmp_path / name)

    short = results("short", [("sa-gsae", 0.1, 1.2, 0.80, 40.0), ("sa-gsae", 0.2, 2.2, 0.70, 20.0),
                              ("sa-gsae", 0.3, 1.004, 0.90, 50.0), ("gated", 0.1, 1.0, 0.85, 30.0)])  # fmt: skip
    long = results("long", [("sa-gsae", 0.1, 1.0, 0.82, 20.0), ("sa-gsae", 0.2, 2.0, 0.71, 15.0),
                            ("sa-gsae", 0.3, 1.0, 0.90, 50.0), ("sa-gsae", 0.4, 3.0, 0.60, 5.0)])  # fmt: skip
    # compare's verdicts at the shorter budget: λ 0.1 converged, λ 0.3 not, λ 0.2 unfinished (not counted)
    (tmp_path / "short" / "compare").mkdir()
    pd.DataFrame([{"model": "m", "hook": "mlp_out", "variant": "sa-gsae", "width": 8, "l1": l1, "seed": 0,
                   "finished": finished, "converged": converged}
                  for l1, finished, converged in [(0.1, True, True), (0.2, False, True), (0.3, True, False)]]
                 ).to_parquet(tmp_path / "short" / "compare" / "convergence.parquet")  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "examples" / "budget_delta.py"

    def row(*folders):
        p = subprocess.run([sys.executable, str(script), *folders], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        rows = [line for line in p.stdout.splitlines() if line.startswith("| m |")]
        assert len(rows) == 1  # gated is in one budget only
        return [c.strip() for c in rows[0].strip("|").split("|")]

    # objective falls 20%, 10% and 0.4% (median 10%); L0 ratios 0.5, 0.75 and 1; R² +0.02, +0.01 and 0;
    # compare called one finished run converged (λ 0.1), and the longer budget moved one by < 1% (λ 0.3)
    assert row(short, long)[2:] == ["sa-gsae", "3", "10.0% (0.4% to 20.0%)", "0.75 (0.50 to 1.00)",
                                    "+0.010 (+0.000 to +0.020)", "1", "1"]  # fmt: skip
    # without a convergence table at the shorter budget compare's column reads "—"
    assert row(long, short)[-2] == "—"
    p = subprocess.run(
        [sys.executable, str(script), short, str(tmp_path / "none")], capture_output=True, text=True
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr and "none" in p.stderr.strip().splitlines()[-1]


def test_verdict_by_budget_lists_one_seeds_verdicts_per_budget(tmp_path):
    """examples/verdict_by_budget.py on two hand-made results folders (a longer budget given first): one row
    per cell and budget, in budget order, from compare's per-seed table for the chosen seed only, with the
    sweep means of L0 and dead fraction of that seed's final points; a folder without a compare table, or
    without a verdict for the seed, is refused in one line, exit 2."""
    import sys

    import pandas as pd

    def results(name, tokens, verdicts, finals):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "compare").mkdir()
        pd.DataFrame([{"model": "m", "hook": "mlp_out", "a": "sa-gsae@8", "b": "gated@16", "seed": seed,
                       "dominates": dom, "fail_l0": fail, "worst_gap": gap, "dead_cut_at_l0": cut,
                       "matched_l0": 10.0, "dead_ratio_geomean": ratio}
                      for seed, dom, fail, gap, cut, ratio in verdicts]).to_parquet(
            tmp_path / name / "compare" / "compare_seeds.parquet")  # fmt: skip
        for i, (variant, width, seed, final, l0, dead) in enumerate(finals):
            pd.DataFrame([{"model": "m", "hook": "mlp_out", "variant": variant, "width": width, "l1": 0.1 * i,
                           "seed": seed, "final": final, "tokens": tokens, "l0": l0, "dead_frac": dead}]).to_parquet(
                tmp_path / name / "eval" / f"{i}.parquet")  # fmt: skip
        return str(tmp_path / name)

    short = results("short", 200_000, [(0, False, 5.0, -0.02, 0.01, 1.5), (1, True, float("nan"), 0.001, 0.2, 9.0)],
                    [("sa-gsae", 8, 0, True, 40.0, 0.0), ("sa-gsae", 8, 0, True, 20.0, 0.1),
                     ("sa-gsae", 8, 0, False, 99.0, 0.9),  # a snapshot: not a final point
                     ("sa-gsae", 8, 1, True, 70.0, 0.5),  # another seed
                     ("gated", 16, 0, True, 30.0, 0.2)])  # fmt: skip
    long = results("long", 4_000_000, [(0, True, float("nan"), 0.003, float("nan"), 120.0)],
                   [("sa-gsae", 8, 0, True, 10.0, 0.0), ("gated", 16, 0, True, 12.0, 0.4)])  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "examples" / "verdict_by_budget.py"
    p = subprocess.run(
        [sys.executable, str(script), long, short, "--seed", "0"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in p.stdout.splitlines()
        if line.startswith("| m |")
    ]
    assert rows == [
        ["m", "mlp_out", "200k", "no (fails at L0 5)", "-0.0200", "+0.010 at L0 10", "1.5×", "30.0 / 30.0",
         "0.050 / 0.200"],
        ["m", "mlp_out", "4M", "yes", "+0.0030", "n/a", "120×", "10.0 / 12.0", "0.000 / 0.400"],
    ]  # fmt: skip
    for args, word in (([str(tmp_path / "none")], "compare"), ([long, "--seed", "1"], "seed 1")):
        p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        assert p.returncode == 2 and "Traceback" not in p.stderr and word in p.stderr.strip().splitlines()[-1]
