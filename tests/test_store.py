import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from conftest import run_cli, write_indexed_store

from sagsae_cli.errors import SagsaeError
from sagsae_cli.store import StoreWriter, open_store


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_every_dtype(tmp_path, dtype):
    x = torch.randn(1000, 16) * 3
    with StoreWriter(tmp_path / "s", d=16, dtype=dtype, config={"a": 1}, chunk_rows=256) as w:
        w.append("train", x[:600], token_ids=np.arange(600), positions=np.arange(600) % 7)
        w.append("train", x[600:])
        w.append("eval", x[:10])
        w.commit(complete=True)
    s = open_store(tmp_path / "s")
    expect = x.to(
        {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    ).float()
    assert torch.equal(s.read("train", 0, 1000), expect)
    assert torch.equal(s.read("eval", 0, 10), expect[:10])
    assert s.rows("train") == 1000 and s.rows("eval") == 10 and s.complete
    np.testing.assert_array_equal(s.read_index("train", "positions", 0, 600), np.arange(600) % 7)
    assert (s.read_index("train", "token_ids", 600, 1000) == -1).all()
    assert s.norm_factor == pytest.approx(float(expect.double().pow(2).sum(1).mean().sqrt()), rel=1e-9)
    normed = s.read("train", 0, 1000, normalise=True)
    assert normed.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_float16_overflow_and_nan_are_errors(tmp_path):
    with StoreWriter(tmp_path / "s", d=4, dtype="float16", config={}) as w:
        with pytest.raises(SagsaeError, match="--dtype"):
            w.append("train", torch.full((3, 4), 70000.0))
        bad = torch.zeros(3, 4)
        bad[1, 2] = float("nan")
        with pytest.raises(SagsaeError, match="NaN"):
            w.append("train", bad)
        w.commit()
        assert w.rows("train") == 0
    raw = zarr.open_group(str(tmp_path / "s"), mode="r")["train/acts"]
    assert raw.shape[0] == 0 or np.isfinite(raw[:]).all()


def test_uncommitted_rows_are_dropped_on_reopen(tmp_path):
    cfg = {"x": 1}
    with StoreWriter(tmp_path / "s", d=4, dtype="float32", config=cfg, chunk_rows=256) as w:
        w.append("train", torch.ones(300, 4))
        w.commit(cursor={"docs": 3})
        w.append("train", torch.ones(500, 4))  # never committed
    with StoreWriter(tmp_path / "s", d=4, dtype="float32", config=cfg) as w:
        assert w.rows("train") == 300 and w.cursor == {"docs": 3}
        assert w.group["train/acts"].shape[0] == 300
    assert open_store(tmp_path / "s").rows("train") == 300


def test_config_mismatch_refused_and_force_starts_over(tmp_path):
    with StoreWriter(tmp_path / "s", d=4, dtype="float32", config={"x": 1}) as w:
        w.append("train", torch.ones(10, 4))
        w.commit()
    with pytest.raises(SagsaeError, match="different config"):
        StoreWriter(tmp_path / "s", d=4, dtype="float32", config={"x": 2})
    assert open_store(tmp_path / "s").rows("train") == 10  # untouched
    with StoreWriter(tmp_path / "s", d=4, dtype="float32", config={"x": 2}, force=True) as w:
        assert w.rows("train") == 0


def test_d_mismatch_on_append_and_wrong_split(tmp_path):
    with StoreWriter(tmp_path / "s", d=4, dtype="float32", config={}) as w:
        with pytest.raises(SagsaeError, match="d=4"):
            w.append("train", torch.ones(3, 5))
        with pytest.raises(SagsaeError, match="unknown split"):
            w.append("validation", torch.ones(3, 4))
    with pytest.raises(SagsaeError, match="unknown split"):
        open_store(tmp_path / "s").rows("test")


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "s"
    code = (
        "import time,sys; from sagsae_cli.store import StoreWriter\n"
        f"w = StoreWriter({str(path)!r}, d=4, dtype='float32', config={{}})\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(SagsaeError, match="another process"):
            StoreWriter(path, d=4, dtype="float32", config={})
        with pytest.raises(SagsaeError, match="another process"):
            StoreWriter(path, d=4, dtype="float32", config={}, force=True)
    finally:
        p.kill()
        p.wait()
    StoreWriter(path, d=4, dtype="float32", config={}).close()  # the lock dies with its process


def test_bad_paths_give_one_line_exit_2(tmp_path):
    p = run_cli("store", "info", tmp_path / "missing", check=2)
    assert "no activation store" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text("{not json")
    p = run_cli("store", "info", tmp_path / "junk", check=2)
    assert "not a readable sagsae activation store" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    p = run_cli("harvest", "--source", "synthetic", "--out", tmp_path / "other", "--tokens", 100, check=2)
    assert "not an activation store" in p.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_corrupt_chunk_is_a_clear_error(tmp_path):
    path = write_indexed_store(tmp_path / "s")
    chunk = path / "train" / "acts" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    s = open_store(path)
    assert s.read("train", 0, 256).shape == (256, 8)  # other chunks still read
    with pytest.raises(SagsaeError, match="corrupt"):
        s.read("train", 0, 1000)


def test_store_info_shows_metadata(tmp_path):
    run_cli("harvest", "--source", "synthetic", "--out", tmp_path / "s", "--tokens", 2000,
            "--eval-tokens", 500, "--quiet", check=0)  # fmt: skip
    p = run_cli("store", "info", tmp_path / "s", check=0)
    for text in ("train rows", "2,000", "eval rows", "norm factor", "disk size", "synthetic-protocol-A"):
        assert text in p.stderr + p.stdout


def _harvest_args(out, tokens=300_000):
    return ["harvest", "--source", "synthetic", "--out", out, "--tokens", tokens, "--eval-tokens", 40_000,
            "--quiet", "--seed", 3]  # fmt: skip


def test_sigkill_mid_write_then_resume_equals_uninterrupted(tmp_path):
    run_cli(*_harvest_args(tmp_path / "ref"), check=0)
    out = tmp_path / "killed"
    for n in (3, 5):  # die right after the 3rd commit, then (resumed) after 5 more: mid-write, any machine
        env = {**os.environ, "SAGSAE_FAULT": f"commit:{n}"}
        p = subprocess.run(
            [sys.executable, "-m", "sagsae_cli", *map(str, _harvest_args(out))], env=env, timeout=300
        )
        assert p.returncode == -signal.SIGKILL
        s = open_store(out)  # reopens cleanly at its last commit
        assert 0 < s.rows("train") + s.rows("eval") and not s.complete
    run_cli(*_harvest_args(out), check=0)
    a, b = open_store(tmp_path / "ref"), open_store(out)
    assert b.complete and a.commit_state["rows"] == b.commit_state["rows"]
    for split in ("train", "eval"):
        for name in ("acts", "positions", "sequence_ids"):
            np.testing.assert_array_equal(a.array(split, name)[:], b.array(split, name)[:])
    assert a.norm_factor == b.norm_factor


def test_store_at_an_fsspec_url_resumes_and_forces_like_a_directory():
    """memory:// through Zarr's FsspecStore: the same commit/resume/--force behaviour as on disk."""
    import uuid

    from sagsae_cli.location import Location, is_url

    url = f"memory://sagsae-{uuid.uuid4().hex}/store"
    assert is_url(url) and not is_url("/tmp/x") and not is_url("file:///tmp/x")
    loc = Location(url)
    assert loc.canonical() == url and loc.name == "store" and str(loc.child("mlp_out")) == url + "/mlp_out"
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    w = StoreWriter(url, d=4, dtype="bfloat16", config={"c": 1}, chunk_rows=4)
    w.append("train", x[:4])
    w.commit(cursor={"done": 4})
    w.append("train", x[4:])  # queued, never committed: gone on reopen
    w._flush()
    w.close()
    w = StoreWriter(url, d=4, dtype="bfloat16", config={"c": 1})
    assert w.cursor == {"done": 4} and w.rows("train") == 4
    w.append("train", x[4:])
    w.commit(complete=True)
    w.close()
    s = open_store(url)
    assert s.complete and s.rows("train") == 6
    assert torch.equal(s.read("train", 0, 6), x.bfloat16().float())
    s.check_chunks()
    assert s.disk_bytes() > 0 and ".lock" not in loc.names()
    with pytest.raises(SagsaeError, match="different config"):
        StoreWriter(url, d=4, dtype="bfloat16", config={"c": 2})
    w = StoreWriter(url, d=4, dtype="bfloat16", config={"c": 2}, force=True)
    assert w.rows("train") == 0
    w.close()


def test_dtype_names_are_one_vocabulary(tmp_path, capsys):
    """harvest and import take train's short names too (bf16, fp32), and record the long one."""
    from conftest import run_inproc

    p = run_inproc("harvest", "--source", "synthetic", "--tokens", 2000, "--eval-tokens", 100, "--dtype", "bf16",
                   "--out", tmp_path / "s", "--quiet", capsys=capsys)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert open_store(tmp_path / "s").dtype == "bfloat16"
    np.save(tmp_path / "x.npy", np.ones((100, 4), dtype="float32"))
    p = run_inproc("store", "import", tmp_path / "x.npy", "--out", tmp_path / "i", "--dtype", "fp32", "--quiet",
                   capsys=capsys)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert open_store(tmp_path / "i").dtype == "float32"
    p = run_inproc("harvest", "--source", "synthetic", "--tokens", 100, "--dtype", "float8", "--out", tmp_path / "b",
                   "--quiet", capsys=capsys)  # fmt: skip
    assert p.returncode == 2 and "unknown store dtype 'float8'" in p.stderr
