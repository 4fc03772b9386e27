"""Bad input on the newer paths (import, export, URLs, snapshots, plots, browse, list options): one line
saying what is wrong and what to do, exit 2, no traceback, existing files byte-identical; and the
inputs that should work (bfloat16 safetensors, brackets, spaces and non-ASCII in paths) do."""

import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import run_cli, run_inproc
from safetensors.torch import save_file
from test_bad_input import TRAIN, one_line_error, snapshot

from sagsae_cli.store import open_store


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A synthetic store with two finished runs (snapshots kept) of different d, evaluated."""
    root = tmp_path_factory.mktemp("rel")
    for d in (16, 12):
        run_cli("harvest", "--source", "synthetic", "--d", d, "--n-axes", 12, "--tokens", "20k", "--eval-tokens",
                "2k", "--out", root / f"store{d}", "--quiet", check=0)  # fmt: skip
        run_cli(*TRAIN, "--store", root / f"store{d}", "--out", root / f"runs{d}", "--snapshots", 2, check=0)
    run = root / "runs16" / "sa-gsae-w12-l1_0.4-s0"
    run_cli("eval", run, "--results", root / "res", "--checkpoints", "--quiet", check=0)
    return {"root": root, "store": root / "store16", "run": run, "run12": root / "runs12" / "sa-gsae-w12-l1_0.4-s0",
            "res": root / "res"}  # fmt: skip


def _import(capsys, src, out, *more):
    return run_inproc("store", "import", src, "--out", out, "--quiet", *more, capsys=capsys)


# --- store import: element types and damaged files ----------------------------------------------------------
@pytest.mark.parametrize(
    "kind, needle",
    [("object", "Python objects"), ("str", "strings"), ("complex", "complex numbers"), ("bool", "booleans")],
)
def test_import_refuses_arrays_that_are_not_real_numbers(tmp_path, capsys, kind, needle):
    arrays = {
        "object": np.array([[1, "a"], [2, "b"]] * 10, dtype=object),
        "str": np.array([["x", "y"]] * 20),
        "complex": (np.ones((20, 4)) + 1j * np.ones((20, 4))).astype(np.complex64),
        "bool": np.ones((20, 4), dtype=bool),
    }
    np.save(tmp_path / "a.npy", arrays[kind], allow_pickle=kind == "object")
    line = one_line_error(_import(capsys, tmp_path / "a.npy", tmp_path / "s"), needle)
    assert "float array" in line or "real part" in line
    assert not (tmp_path / "s").exists()
    # the same inside an .npz (objects need pickle there too)
    np.savez(tmp_path / "a.npz", acts=arrays[kind])
    one_line_error(_import(capsys, tmp_path / "a.npz", tmp_path / "s2"), needle)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_import_of_a_truncated_file_is_one_line(tmp_path, capsys, suffix):
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".npy":
        np.save(whole, x)
    elif suffix == ".npz":
        np.savez(whole, acts=x)
    else:
        save_file({"acts": torch.from_numpy(x)}, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    one_line_error(_import(capsys, cut, tmp_path / "s"), "damaged or truncated", cut.name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_low_precision_safetensors_import_as_their_float32_values(tmp_path, capsys, dtype):
    """bfloat16 is SAELens's usual dtype: it imports, and equals the same values imported from float32."""
    x = torch.randn(600, 8).to(dtype)
    save_file({"acts": x}, tmp_path / "low.safetensors")
    np.save(tmp_path / "wide.npy", x.float().numpy())
    _import(capsys, tmp_path / "low.safetensors", tmp_path / "a", "--max-norm-ratio", 0)
    _import(capsys, tmp_path / "wide.npy", tmp_path / "b", "--max-norm-ratio", 0)
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    for split in ("train", "eval"):
        assert a.rows(split) == b.rows(split) > 0
        assert torch.equal(a.read(split, 0, a.rows(split)), b.read(split, 0, b.rows(split)))


def test_import_refuses_mixed_layouts_and_all_zero_rows(tmp_path, capsys):
    (tmp_path / "mix").mkdir()
    np.save(tmp_path / "mix" / "a.npy", np.ones((100, 8), np.float32))
    np.save(tmp_path / "mix" / "b.npy", np.ones((10, 16, 8), np.float32))
    one_line_error(_import(capsys, tmp_path / "mix", tmp_path / "s"), "mix (tokens, d)", "separately")
    np.save(tmp_path / "zero.npy", np.zeros((400, 8), np.float32))
    one_line_error(_import(capsys, tmp_path / "zero.npy", tmp_path / "z"), "zero", "norm factor 0")
    # and a store of zeros made by an older import is refused at train, not divided by zero
    z = tmp_path / "z"
    assert not open_store(z).complete
    one_line_error(run_inproc(*TRAIN, "--store", z, "--out", tmp_path / "r", "--allow-incomplete", capsys=capsys),
                   "zero", "norm factor 0")  # fmt: skip


def test_import_max_norm_ratio_below_one_is_refused(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.ones((100, 8), np.float32))
    one_line_error(
        _import(capsys, tmp_path / "a.npy", tmp_path / "s", "--max-norm-ratio", 0.5), "--max-norm-ratio"
    )
    assert not (tmp_path / "s").exists()


# --- URLs and export -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["s3://", "gs://", "az:///", "s3:///"])
def test_a_url_without_a_bucket_is_one_line(capsys, url):
    one_line_error(run_inproc("store", "info", url, capsys=capsys), "names no", "<bucket>")


def test_an_unreachable_endpoint_fails_fast_naming_the_variable(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    from sagsae_cli import location

    location._PROBED.clear()
    one_line_error(run_inproc("store", "info", "gs://bucket/store", capsys=capsys), "cannot reach",
                   "STORAGE_EMULATOR_HOST")  # fmt: skip


def test_export_refuses_urls_and_unfinished_stores(made, tmp_path, capsys):
    one_line_error(run_inproc("store", "export", made["store"], "--out", "s3://nobucket/x", capsys=capsys),
                   "local directory")  # fmt: skip
    assert not os.path.exists("s3:") and not os.path.exists("s3:/nobucket")
    part = tmp_path / "part"
    shutil.copytree(made["store"], part)
    meta = part / "zarr.json"
    import json

    doc = json.loads(meta.read_text())
    doc["attributes"]["commit"]["complete"] = False
    meta.write_text(json.dumps(doc))
    one_line_error(run_inproc("store", "export", part, "--out", tmp_path / "e", capsys=capsys), "incomplete",
                   "--allow-incomplete")  # fmt: skip
    assert not (tmp_path / "e").exists()
    run_inproc(
        "store", "export", part, "--out", tmp_path / "e", "--allow-incomplete", "--quiet", capsys=capsys
    )
    assert (tmp_path / "e" / "train.npy").exists()


def test_a_store_being_written_is_named_as_such(made, tmp_path, capsys):
    """While a writer holds the store's lock, train and ablate say it is still being written (not 'rerun
    its harvest')."""
    import json

    from sagsae_cli.files import lock_dir, unlock

    part = tmp_path / "part"
    shutil.copytree(made["store"], part)
    doc = json.loads((part / "zarr.json").read_text())
    doc["attributes"]["commit"]["complete"] = False
    (part / "zarr.json").write_text(json.dumps(doc))
    fd = lock_dir(part, "harvesting")
    try:
        for cmd in ([*TRAIN, "--out", tmp_path / "r"], ["ablate", "--width", 8, "--tokens", "2k", "--batch", 500,
                                                          "--out", tmp_path / "a", "--results", tmp_path / "ar"]):  # fmt: skip
            line = one_line_error(run_inproc(*cmd, "--store", part, capsys=capsys), "still being written")
            assert "rerun" not in line
    finally:
        unlock(fd)
    line = one_line_error(
        run_inproc(*TRAIN, "--store", part, "--out", tmp_path / "r", capsys=capsys), "incomplete"
    )
    assert "rerun" in line


# --- snapshots, tables, browse ---------------------------------------------------------------------------------
def test_eval_checkpoints_ignores_what_is_not_a_snapshot(made, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    snaps = sorted((run / "checkpoints").glob("tokens-*"))
    assert snaps
    shutil.copytree(snaps[0], run / "checkpoints" / f"{snaps[0].name} copy")
    shutil.copytree(snaps[0], run / "checkpoints" / f"{snaps[0].name}.bak")
    (run / "checkpoints" / "tokens-notes.txt").write_text("mine")
    p = run_inproc("eval", run, "--results", tmp_path / "res", "--checkpoints", "--quiet", capsys=capsys)
    assert p.returncode == 0, p.stderr
    import pandas as pd

    parts = list((tmp_path / "res" / "checkpoints").glob("*.parquet"))
    assert len(parts) == len(snaps)
    assert sorted(pd.concat(pd.read_parquet(x) for x in parts).tokens) == sorted(
        int(s.name.split("-")[1]) for s in snaps
    )
    # and --force on the run keeps the user's copies
    assert (run / "checkpoints" / f"{snaps[0].name} copy").exists()


@pytest.mark.parametrize("plot", ["census", "pareto", "convergence", "training"])
def test_plots_on_damaged_tables_are_one_line(made, tmp_path, capsys, plot):
    res = tmp_path / "res"
    shutil.copytree(made["res"], res)
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    target = {
        "census": next((res / "census").glob("*.parquet")),
        "pareto": next((res / "eval").glob("*.parquet")),
        "convergence": next((res / "checkpoints").glob("*.parquet")),
        "training": run / "history.parquet",
    }[plot]
    target.write_bytes(b"PAR1 not a table")
    before = snapshot(res)
    args = ["--run", run] if plot == "training" else ["--results", res]
    one_line_error(run_inproc("plot", plot, *args, "--out", tmp_path / "fig", capsys=capsys), target.name)
    assert snapshot(res) == before


def test_compare_validates_every_input_before_writing(made, tmp_path, capsys):
    res = tmp_path / "res"
    shutil.copytree(made["res"], res)
    # a second variant so that compare has a cell, then a compare table to protect
    run_cli(*TRAIN, "--store", made["store"], "--out", tmp_path / "runs", "--variant", "gated", "--width", 24,
            "--snapshots", 2, check=0)  # fmt: skip
    run_cli(
        "eval",
        tmp_path / "runs" / "gated-w24-l1_0.4-s0",
        "--results",
        res,
        "--checkpoints",
        "--quiet",
        check=0,
    )
    p = run_inproc("compare", "--results", res, capsys=capsys)
    assert p.returncode == 0, p.stderr
    next((res / "checkpoints").glob("*.parquet")).write_bytes(b"garbage")
    before = snapshot(res / "compare")
    p = run_inproc("compare", "--results", res, capsys=capsys)
    one_line_error(p, "not a readable table")
    assert "dominates" not in p.stderr and snapshot(res / "compare") == before


def test_browse_compare_of_different_d_is_one_line(made, tmp_path, capsys):
    one_line_error(run_inproc("browse", made["run"], made["run12"], "--compare", "--out", tmp_path / "site",
                              capsys=capsys), "d = 16", "d = 12")  # fmt: skip
    assert not (tmp_path / "site").exists()


# --- list options, devices, numbers, paths ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, needle",
    [("--l1", "0.1,0.1", "0.1 more than once"), ("--seeds", "0,0", "0 more than once"),
     ("--variant", "tied,tied", "more than once"), ("--variant", "tied,sa-gsae", "sa-gsae more than once"),
     ("--seeds", str(2**64), "between 0 and"), ("--device", "mps", "--device"),
     ("--target-l0", "64", "exceeds the width")],
)  # fmt: skip
def test_train_options_refused_in_one_line(made, tmp_path, capsys, flag, value, needle):
    line = one_line_error(
        run_inproc(*TRAIN, "--store", made["store"], "--out", tmp_path / "r", flag, value, capsys=capsys),
        needle,
    )
    assert "another process" not in line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.safetensors"))


def test_ablate_target_l0_inf_is_refused(made, tmp_path, capsys):
    one_line_error(run_inproc("ablate", "--store", made["store"], "--width", 8, "--target-l0", "inf", "--out",
                              tmp_path / "a", "--results", tmp_path / "r", capsys=capsys), "--target-l0")  # fmt: skip


def test_paths_with_brackets_spaces_and_non_ascii_work_and_print_as_they_are(made, tmp_path, capsys):
    odd = tmp_path / "runs [v2] ünï"
    p = run_inproc(*TRAIN, "--store", made["store"], "--out", odd, capsys=capsys)
    assert p.returncode == 0, p.stderr
    assert (odd / "sa-gsae-w12-l1_0.4-s0" / "sae_weights.safetensors").exists()
    assert "runs [v2] ünï" in p.stderr + p.stdout
    line = one_line_error(run_inproc("store", "info", tmp_path / "no [such] store", capsys=capsys), "[such]")
    assert "no [such] store" in line


def test_a_name_longer_than_the_file_system_allows_is_one_line(made, tmp_path, capsys):
    long = tmp_path / ("a" * 300)
    one_line_error(run_inproc(*TRAIN, "--store", made["store"], "--out", long, capsys=capsys), "shorter")


def test_a_damaged_zip_is_reported_not_raised(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("acts.npy", b"\x93NUMPY garbage")
    one_line_error(_import(capsys, tmp_path / "z.npz", tmp_path / "s"), "z.npz")


def test_a_run_resumes_from_another_working_directory(made, tmp_path):
    """The same store named by another relative path from another directory is the same run: skipped as
    finished, not refused as 'a different config'."""
    import subprocess
    import sys

    store = made["store"]
    first = tmp_path / "a"
    first.mkdir()
    (tmp_path / "b" / "c").mkdir(parents=True)

    def train(cwd, store_arg):
        return subprocess.run([sys.executable, "-m", "sagsae_cli", *map(str, TRAIN), "--store", store_arg, "--out",
                               tmp_path / "runs"], cwd=cwd, capture_output=True, text=True)  # fmt: skip

    p = train(first, os.path.relpath(store, first))
    assert p.returncode == 0, p.stderr
    p = train(tmp_path / "b" / "c", os.path.relpath(store, tmp_path / "b" / "c"))
    assert p.returncode == 0 and "different config" not in p.stderr, p.stderr
