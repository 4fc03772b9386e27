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
    assert "does not exist" in p.stderr and "Traceback" not in p.stderr


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


@pytest.mark.parametrize("variant", ["gated", "sa-gsae"])
def test_eval_objective_is_the_training_loss_on_held_out_rows(runs, variant):
    """The ``objective`` column and its terms, recomputed in float64 from the raw Zarr rows and the
    exported weights with the literal formulas of docs/METHOD.md §4-5 (not through the SAE's forward)."""
    import numpy as np
    import torch
    import zarr

    from sagsae_cli.evaluate import evaluate_run
    from sagsae_cli.sae import load_sae

    run = runs / "runs" / f"{variant}-w48-l1_0.4-s0"
    row, _ = evaluate_run(run, 3000)
    raw = np.asarray(zarr.open_group(str(runs / "s"), mode="r")["eval/acts"][:3000], dtype=np.float64)
    x = torch.from_numpy(raw / json.loads((run / "cfg.json").read_text())["norm_factor_folded"])
    sae, _ = load_sae(run)  # acts on normalised rows: x / s
    p = {n: t.detach().double() for n, t in sae.named_parameters()}
    u = (x - p["b_dec"]) @ p["W_enc"]
    pi, m = u + p["b_gate"], torch.exp(p["r_mag"]) * u + p["b_mag"]
    if variant == "gated":
        s = pi.clamp_min(0)  # ReLU(pi)
        f = (pi > 0) * m.clamp_min(0)
    else:
        theta = p["log_threshold"].exp()
        s = (pi - theta).clamp_min(0) - (-pi - theta).clamp_min(0)
        f = (s > 0) * m.clamp_min(0) + (s < 0) * m.clamp_max(0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    mse = ((x - x_hat) ** 2).sum(1).mean()
    sparsity = 0.4 * s.abs().sum(1).mean()
    aux = ((x - (s @ p["W_dec"] + p["b_dec"])) ** 2).sum(1).mean()
    assert row["objective_mse"] == pytest.approx(float(mse), rel=1e-4)
    assert row["objective_sparsity"] == pytest.approx(float(sparsity), rel=1e-4)
    assert row["objective_aux"] == pytest.approx(float(aux), rel=1e-4)
    assert row["objective"] == pytest.approx(float(mse + sparsity + aux), rel=1e-4)
    assert row["objective_mse"] == pytest.approx(row["mse"], rel=1e-5)  # the same squared error


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
    assert snaps.objective.notna().all() and final.objective.notna().all()
    parts = sorted((tmp_path / "res" / "checkpoints").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in parts]
    run_cli("eval", run, "--results", tmp_path / "res", "--checkpoints", "--quiet", check=0)
    assert mtimes == [p.stat().st_mtime_ns for p in parts]
    # a row cached before eval recorded the objective is recomputed once, the others kept
    old = pd.read_parquet(parts[0])
    old.drop(columns=[c for c in old if c.startswith("objective")]).to_parquet(parts[0], index=False)
    run_cli("eval", run, "--results", tmp_path / "res", "--checkpoints", "--quiet", check=0)
    assert pd.read_parquet(parts[0]).objective.iloc[0] == pytest.approx(old.objective.iloc[0])
    assert mtimes[1:] == [p.stat().st_mtime_ns for p in parts[1:]]
