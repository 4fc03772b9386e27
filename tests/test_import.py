"""`sagsae store import` / `export`: every source format into a store with the same rows (eval first,
contexts never split), validation as harvest's, kill-and-resume, the way back, and training on it."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli, run_inproc
from safetensors.numpy import save_file
from test_bad_input import one_line_error

from sagsae_cli.store import open_store


def rows_of(store_path):
    s = open_store(store_path)
    return s.read("eval", 0, s.rows("eval")).numpy(), s.read("train", 0, s.rows("train")).numpy()


def data(n=3000, d=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_npy_rows_come_in_order_eval_first(tmp_path, capsys):
    x = data()
    np.save(tmp_path / "a.npy", x)
    run_inproc("store", "import", tmp_path / "a.npy", "--out", tmp_path / "s", "--split-eval", 0.1, "--quiet",
               capsys=capsys)  # fmt: skip
    ev, tr = rows_of(tmp_path / "s")
    assert len(ev) == 300 and np.array_equal(np.concatenate([ev, tr]), x)
    s = open_store(tmp_path / "s")
    assert s.complete and s.norm_factor == pytest.approx(
        float(np.sqrt((tr.astype(np.float64) ** 2).sum(1).mean()))
    )


def test_per_context_arrays_split_by_whole_contexts(tmp_path, capsys):
    x = data(40 * 16).reshape(40, 16, 12)  # 40 contexts of 16 tokens
    np.save(tmp_path / "c.npy", x)
    run_inproc("store", "import", tmp_path / "c.npy", "--out", tmp_path / "s", "--split-eval", 0.1, "--quiet",
               capsys=capsys)  # fmt: skip
    ev, tr = rows_of(tmp_path / "s")
    assert len(ev) == 4 * 16  # ceil(0.1 * 40) contexts
    assert np.array_equal(np.concatenate([ev, tr]), x.reshape(-1, 12))


def test_npz_safetensors_directory_and_datasets(tmp_path, capsys):
    x, y = data(seed=1), data(seed=2)
    np.savez(tmp_path / "two.npz", acts=x, other=y)
    one_line_error(run_inproc("store", "import", tmp_path / "two.npz", "--out", tmp_path / "bad", capsys=capsys),
                   "--column")  # fmt: skip
    run_inproc("store", "import", tmp_path / "two.npz", "--column", "acts", "--out", tmp_path / "npz", "--quiet",
               capsys=capsys)  # fmt: skip
    save_file({"blocks.3.hook_resid_pre": x}, str(tmp_path / "a.safetensors"))
    run_inproc(
        "store", "import", tmp_path / "a.safetensors", "--out", tmp_path / "st", "--quiet", capsys=capsys
    )
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "part0.npy", x[:1000])
    np.save(tmp_path / "dir" / "part1.npy", x[1000:])
    run_inproc("store", "import", tmp_path / "dir", "--out", tmp_path / "dirs", "--quiet", capsys=capsys)
    import datasets  # SAELens's cached-activation layout: one column of (seq, d) per context

    datasets.Dataset.from_dict({"blocks.3.hook_resid_pre": x.reshape(250, 12, 12)}).save_to_disk(
        tmp_path / "hf"
    )
    run_inproc("store", "import", tmp_path / "hf", "--out", tmp_path / "hfs", "--quiet", "--model", "pythia-70m",
               "--hook-name", "blocks.3.hook_resid_pre", capsys=capsys)  # fmt: skip
    for out in ("npz", "st", "dirs", "hfs"):
        ev, tr = rows_of(tmp_path / out)
        assert np.array_equal(np.concatenate([ev, tr]), x), out
    assert open_store(tmp_path / "hfs").meta["hook_name"] == "blocks.3.hook_resid_pre"


def test_validation_is_one_line(tmp_path, capsys):
    x = data()
    x[1234, 5] = np.nan
    np.save(tmp_path / "nan.npy", x)
    one_line_error(run_inproc("store", "import", tmp_path / "nan.npy", "--out", tmp_path / "s1", capsys=capsys),
                   "row 1,234", "NaN")  # fmt: skip
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", data(d=8))
    np.save(tmp_path / "mixed" / "b.npy", data(d=9))
    one_line_error(run_inproc("store", "import", tmp_path / "mixed", "--out", tmp_path / "s2", capsys=capsys),
                   "disagree on d")  # fmt: skip
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    one_line_error(run_inproc("store", "import", tmp_path / "flat.npy", "--out", tmp_path / "s3", capsys=capsys),
                   "shape")  # fmt: skip
    one_line_error(run_inproc("store", "import", tmp_path / "nope.npy", "--out", tmp_path / "s4", capsys=capsys),
                   "does not exist")  # fmt: skip
    one_line_error(run_inproc("store", "import", tmp_path / "flat.npy", "--out", tmp_path / "s5", "--split-eval", 1,
                              capsys=capsys), "--split-eval")  # fmt: skip


def test_norm_filter_drops_outliers_and_counts_them(tmp_path, capsys):
    x = data()
    x[2000] *= 100
    np.save(tmp_path / "a.npy", x)
    run_inproc("store", "import", tmp_path / "a.npy", "--out", tmp_path / "s", "--quiet", capsys=capsys)
    s = open_store(tmp_path / "s")
    assert s.rows("train") + s.rows("eval") == len(x) - 1 and s.meta["dropped"] == 1


def test_killed_import_resumes_to_the_same_store(tmp_path):
    x = data(5000)
    np.save(tmp_path / "a.npy", x)
    env = {**os.environ, "SAGSAE_IMPORT_ROWS": "700", "SAGSAE_FAULT": "commit:3"}
    args = ["store", "import", tmp_path / "a.npy", "--out", tmp_path / "s", "--quiet"]
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", *map(str, args)], env=env)
    assert p.returncode == -signal.SIGKILL and not open_store(tmp_path / "s").complete
    run_cli(*args, check=0)  # resumes (with the slice size it started with)
    ev, tr = rows_of(tmp_path / "s")
    assert np.array_equal(np.concatenate([ev, tr]), x)


def test_export_round_trip_and_training_on_an_import(tmp_path, capsys):
    x = data(6000, d=16)
    np.save(tmp_path / "a.npy", x)
    run_inproc("store", "import", tmp_path / "a.npy", "--out", tmp_path / "s", "--quiet", capsys=capsys)
    run_inproc("store", "export", tmp_path / "s", "--out", tmp_path / "e", "--quiet", capsys=capsys)
    back = np.concatenate([np.load(tmp_path / "e" / "eval.npy"), np.load(tmp_path / "e" / "train.npy")])
    assert np.array_equal(back, x)
    one_line_error(
        run_inproc("store", "export", tmp_path / "s", "--out", tmp_path / "e", capsys=capsys), "--force"
    )
    p = run_inproc("train", "--store", tmp_path / "s", "--out", tmp_path / "r", "--width", 16, "--tokens", "6k",
                   "--batch", 500, "--quiet", capsys=capsys)  # fmt: skip
    assert p.returncode == 0, p.stderr
    p = run_inproc(
        "eval", *(tmp_path / "r").iterdir(), "--results", tmp_path / "res", "--quiet", capsys=capsys
    )
    assert p.returncode == 0, p.stderr
