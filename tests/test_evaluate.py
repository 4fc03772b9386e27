import json

import pandas as pd
import pytest
from conftest import run_cli

from sagsae_cli.evaluate import read_table


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    run_cli("harvest", "--source", "synthetic", "--out", root / "s", "--tokens", 50_000, "--eval-tokens", 4000,
            "--quiet", check=0)  # fmt: skip
    run_cli("train", "--store", root / "s", "--out", root / "runs", "--variant", "sa-gsae,gated", "--width", 48,
            "--l1", "0.4", "--tokens", 60_000, "--batch", 1000, "--lr", 2e-3, "--quiet", check=0)  # fmt: skip
    return root


def test_eval_writes_one_part_per_run_and_skips(runs):
    p = run_cli("eval", *sorted((runs / "runs").iterdir()), "--results", runs / "res", check=0)
    assert "sa-gsae-w48-l1_0.4-s0" in p.stderr + p.stdout
    table = read_table(runs / "res")
    assert sorted(table["variant"]) == ["gated", "sa-gsae"]
    assert (table["eval_tokens"] == 4000).all()
    for _, row in table.iterrows():
        assert 0 <= row["dead_frac"] <= 1 and row["l0"] >= 0 and row["r2"] <= 1
        assert 0 < row["axis_recovery"] <= 1 + 1e-9
    sa = table[table.variant == "sa-gsae"].iloc[0]
    assert sa["params"] == 2 * 48 * 64 + 4 * 48 + 64
    from sagsae_cli.evaluate import part_name

    part = runs / "res" / "eval" / part_name(runs / "runs" / "sa-gsae-w48-l1_0.4-s0")
    before = part.stat().st_mtime_ns
    run_cli("eval", *sorted((runs / "runs").iterdir()), "--results", runs / "res", check=0)
    assert part.stat().st_mtime_ns == before  # skipped
    run_cli("eval", runs / "runs" / "sa-gsae-w48-l1_0.4-s0", "--results", runs / "res", "--force", check=0)
    assert part.stat().st_mtime_ns != before
    again = pd.read_parquet(part)
    assert again["r2"].iloc[0] == pytest.approx(sa["r2"])  # deterministic


def test_eval_bad_input(runs, tmp_path):
    p = run_cli("eval", tmp_path / "nothing", "--results", tmp_path / "r", check=2)
    assert "no run directories matched" in p.stderr and "Traceback" not in p.stderr


def test_same_run_id_in_two_directories_keeps_both_rows(runs, tmp_path):
    import shutil

    for hook in ("a", "b"):
        shutil.copytree(runs / "runs" / "gated-w48-l1_0.4-s0", tmp_path / hook / "gated-w48-l1_0.4-s0")
    run_cli("eval", tmp_path / "a" / "gated-w48-l1_0.4-s0", tmp_path / "b" / "gated-w48-l1_0.4-s0",
            "--results", tmp_path / "res", check=0)  # fmt: skip
    assert len(read_table(tmp_path / "res")) == 2


def test_run_whose_store_moved(runs, tmp_path):
    import shutil

    shutil.copytree(runs / "s", tmp_path / "s")
    run_cli("train", "--store", tmp_path / "s", "--out", tmp_path / "runs", "--variant", "gated", "--width", 16,
            "--tokens", 2000, "--batch", 1000, "--quiet", check=0)  # fmt: skip
    (tmp_path / "s").rename(tmp_path / "s-moved")
    p = run_cli("eval", tmp_path / "runs" / "gated-w16-l1_0.4-s0", "--results", tmp_path / "res", check=2)
    assert "store of" in p.stderr and "is gone" in p.stderr and "Traceback" not in p.stderr


def test_evaluate_run_against_an_independent_computation(runs):
    """R², MSE, L0 and dead fraction recomputed from the raw Zarr arrays and the exported (folded,
    raw-activation) SAE with plain numpy/torch, not through the reader or metrics."""
    import numpy as np
    import torch
    import zarr

    from sagsae_cli.evaluate import evaluate_run
    from sagsae_cli.sae import load_sae

    run = runs / "runs" / "sa-gsae-w48-l1_0.4-s0"
    row, _ = evaluate_run(run, 3000)
    raw = np.asarray(zarr.open_group(str(runs / "s"), mode="r")["eval/acts"][:3000], dtype=np.float64)
    sae, _ = load_sae(run, normalised=False)  # acts on raw activations
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(raw).float()).double()
        x_hat = (f @ sae.W_dec.double() + sae.b_dec.double()).numpy()
    sse = ((raw - x_hat) ** 2).sum()
    sst = ((raw - raw.mean(0)) ** 2).sum()
    s = json.loads((run / "cfg.json").read_text())["norm_factor_folded"]
    assert row["eval_tokens"] == 3000
    assert row["r2"] == pytest.approx(1 - sse / sst, abs=1e-5)  # R² does not depend on the scale
    assert row["mse"] == pytest.approx(sse / 3000 / s**2, rel=1e-4)  # MSE is in normalised units
    assert row["l0"] == pytest.approx(float((f != 0).sum()) / 3000)
    assert row["dead_frac"] == pytest.approx(float(((f != 0).sum(0) == 0).double().mean()))


def test_eval_checkpoints_of_a_tiny_run(runs, tmp_path):
    """Every snapshot is evaluated into <results>/checkpoints with its token count; a rerun skips them."""
    run_cli("train", "--store", runs / "s", "--out", tmp_path / "runs", "--variant", "gated", "--width", 16,
            "--tokens", 8000, "--batch", 1000, "--snapshots", 3, "--quiet", check=0)  # fmt: skip
    run = tmp_path / "runs" / "gated-w16-l1_0.4-s0"
    run_cli("eval", run, "--results", tmp_path / "res", "--checkpoints", "--quiet", check=0)
    snaps = read_table(tmp_path / "res", "checkpoints").sort_values("tokens")
    # 8 steps, 3 snapshots: after steps 2, 4, 6 (x 1000 tokens); the final row says 8000
    assert snaps.tokens.tolist() == [2000, 4000, 6000] and not snaps.final.any()
    final = read_table(tmp_path / "res")
    assert final.tokens.tolist() == [8000] and final.final.all()
    assert len(set(snaps.r2.round(8))) == 3  # three different SAEs
    mtimes = [p.stat().st_mtime_ns for p in sorted((tmp_path / "res" / "checkpoints").iterdir())]
    run_cli("eval", run, "--results", tmp_path / "res", "--checkpoints", "--quiet", check=0)
    assert mtimes == [p.stat().st_mtime_ns for p in sorted((tmp_path / "res" / "checkpoints").iterdir())]
