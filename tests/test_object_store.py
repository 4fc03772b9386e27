"""Stores on object storage, against a real S3-compatible server (moto in server mode on 127.0.0.1):
harvest writes, a kill resumes to the identical store, 2 torchrun processes train from it, eval/import/
export read it, and the writer's lock holds without flock or rename. Credentials come only from the
standard environment variables, as they would for a user."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import free_port, local_server, run_cli
from safetensors.torch import load_file

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the environment that points boto at it; yields a bucket."""
    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    with local_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, env):
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("sagsae-test")
        yield fs


SYN = ["--source", "synthetic", "--d", 64, "--tokens", 100_000, "--eval-tokens", 5_000, "--quiet"]


def _arrays(path) -> dict[str, np.ndarray]:
    from sagsae_cli.store import open_store

    s = open_store(str(path))
    out = {f"{sp}/{n}": s.array(sp, n)[: s.rows(sp)] for sp in ("train", "eval")
           for n in ("acts", "token_ids", "positions", "sequence_ids")}  # fmt: skip
    truth = s.truth()
    if truth is not None:
        out["truth/axes"] = truth["axes"]
    return out | {"norm": np.array(s.norm_factor)}


def kill_resume_equals_local(tmp_path, fs, url: str):
    """Harvest into ``url``, killed after its second commit, then resumed (same host, the owner's pid
    gone: its lock is taken over): the store equals a local harvest's. Returns the resume's process."""
    run_cli("harvest", *SYN, "--out", tmp_path / "local", check=0)
    key = url.split("://", 1)[1] + "/.lock"
    killed = subprocess.run([sys.executable, "-m", "sagsae_cli", "harvest", *map(str, SYN), "--out", url],
                            env={**os.environ, "SAGSAE_FAULT": "commit:2"}, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert fs.exists(key)  # the dead writer's lock object is still there
    from sagsae_cli.store import open_store

    partial = open_store(url)
    assert not partial.complete and 0 < partial.rows("train") < 100_000
    resumed = run_cli("harvest", *SYN, "--out", url, check=0)
    assert not fs.exists(key)  # released at the end
    a, b = _arrays(tmp_path / "local"), _arrays(url)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return resumed


def train_and_eval_read(tmp_path, url: str) -> None:
    """`train` reads the store at ``url`` (printing no traceback, not even at exit) and `eval` scores the
    run on its 5,000 held-out rows."""
    p = run_cli("train", "--store", url, "--out", tmp_path / "runs", "--width", 32, "--tokens", 20_000,
                "--batch", 500, "--quiet", check=0)  # fmt: skip
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    run_cli("eval", *sorted((tmp_path / "runs").iterdir()), "--results", tmp_path / "res", "--quiet", check=0)
    import pandas as pd

    row = pd.read_parquet(next((tmp_path / "res" / "eval").glob("*.parquet"))).iloc[0]
    assert row["eval_tokens"] == 5_000 and 0 < row["r2"] <= 1


def test_harvest_kill_resume_on_s3_equals_local(tmp_path, s3):
    url = "s3://sagsae-test/syn"
    kill_resume_equals_local(tmp_path, s3, url)
    p = run_cli("store", "info", url, check=0)
    assert url in p.stderr + p.stdout and "100,000" in p.stderr + p.stdout


def hold_and_refuse(url: str):
    """A writer holding ``url``'s lock with 5 rows committed; another process (the CLI) is refused in
    one line while it holds it. Returns the writer."""
    from sagsae_cli.store import StoreWriter

    w = StoreWriter(url, d=4, dtype="float32", config={"c": 1})
    w.append("train", torch.ones(5, 4))
    w.commit()
    p = run_cli(
        "harvest", "--source", "synthetic", "--d", 4, "--tokens", 100, "--out", url, "--force", check=2
    )
    assert "another process is writing" in p.stderr and p.stderr.count("\n") == 1
    return w


def lock_refuses_live_and_takes_over_stale(fs, url: str, monkeypatch):
    """A lock held by a live process on another host is refused, the same lock past its lease is taken
    over, and the writer whose lock was taken over stops before publishing its next commit (its
    conditional overwrite fails)."""
    from sagsae_cli.errors import SagsaeError
    from sagsae_cli.store import StoreWriter, open_store

    key = url.split("://", 1)[1] + "/.lock"
    w = hold_and_refuse(url)
    held = json.loads(fs.cat(key))
    fs.pipe(key, json.dumps({**held, "host": "elsewhere", "pid": 1}).encode())
    with pytest.raises(SagsaeError, match="another process is writing"):
        StoreWriter(url, d=4, dtype="float32", config={"c": 1})
    monkeypatch.setenv("SAGSAE_LOCK_LEASE", "0")
    w2 = StoreWriter(url, d=4, dtype="float32", config={"c": 1})
    assert json.loads(fs.cat(key))["token"] == w2._lock.owner["token"]
    w.append("train", torch.ones(7, 4))
    with pytest.raises(SagsaeError, match="lost the lock"):
        w.commit()
    w._lock.key = None  # not ours any more: nothing to release
    assert open_store(url).rows("train") == 5  # the loser's rows were never published
    w2.append("train", torch.ones(2, 4))
    w2.commit()
    w2.close()
    assert open_store(url).rows("train") == 7 and not fs.exists(key)


@pytest.mark.parametrize("scheme", ["s3", "s3a"])  # s3a:// (Hadoop's name) is the same s3fs filesystem
def test_object_lock_refuses_a_live_writer_and_takes_over_a_stale_one(s3, monkeypatch, scheme):
    lock_refuses_live_and_takes_over_stale(s3, f"{scheme}://sagsae-test/locked-{scheme}", monkeypatch)


def test_torchrun_trains_from_s3_and_eval_reads_it(tmp_path, s3):
    url = "s3://sagsae-test/ddp"
    run_cli("harvest", "--source", "synthetic", "--out", url, "--tokens", 20_001, "--eval-tokens", 500,
            "--quiet", check=0)  # fmt: skip
    args = ["train", "--store", url, "--variant", "sa-gsae", "--width", 48, "--l1", 0.4, "--tokens", 30_000,
            "--batch", 1000, "--lr", 2e-3, "--quiet"]  # fmt: skip
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "sagsae_cli", *map(str, args), "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run_cli(*args, "--data-shards", 2, "--out", tmp_path / "single", check=0)
    run = "sa-gsae-w48-l1_0.4-s0"
    a = load_file(str(tmp_path / "ddp" / run / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "single" / run / "sae_weights.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-4, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    assert json.loads((tmp_path / "ddp" / run / "train_cfg.json").read_text())["store"] == url
    run_cli("eval", tmp_path / "ddp" / run, "--results", tmp_path / "res", "--quiet", check=0)
    import pandas as pd

    row = pd.read_parquet(next((tmp_path / "res" / "eval").glob("*.parquet"))).iloc[0]
    assert row["eval_tokens"] == 500 and 0 < row["r2"] <= 1


def test_import_to_s3_and_export_back(tmp_path, s3):
    x = np.random.default_rng(0).standard_normal((3000, 16)).astype("float32")
    np.save(tmp_path / "acts.npy", x)
    url = "s3://sagsae-test/imported"
    run_cli("store", "import", tmp_path / "acts.npy", "--out", url, "--split-eval", 0.1, "--quiet", check=0)
    run_cli("store", "export", url, "--out", tmp_path / "back", "--quiet", check=0)
    back = np.concatenate([np.load(tmp_path / "back" / "eval.npy"), np.load(tmp_path / "back" / "train.npy")])
    np.testing.assert_array_equal(back, x)


def test_object_store_bad_input_is_one_line(tmp_path, s3):
    for args in (
        ["store", "info", "s3://sagsae-test/nothing-here"],
        ["train", "--store", "s3://no-such-bucket/s", "--out", tmp_path / "r", "--quiet"],
        ["harvest", "--source", "synthetic", "--tokens", 100, "--out", "s3://no-such-bucket/s", "--quiet"],
        ["store", "info", "nosuchscheme://x/y"],
    ):
        p = run_cli(*args, check=2)
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr


def test_lm_harvest_of_two_hooks_to_s3_equals_local(tmp_path, s3):
    """One process (torchrun harvests are compared with one-process ones in test_distributed.py; each
    extra torchrun start is another chance of gloo's abort at exit, see distributed.leave)."""
    from conftest import make_tiny_model, write_corpus

    model, corpus = make_tiny_model("llama", tmp_path / "m"), write_corpus(tmp_path / "c", n_docs=12)
    args = ["harvest", "--model", model, "--dataset", corpus, "--hook", "resid_mid,mlp_out", "--layer", 1,
            "--context", 16, "--tokens", 1500, "--eval-tokens", 300, "--batch-size", 3, "--quiet"]  # fmt: skip
    run_cli(*args, "--out", "s3://sagsae-test/lm", check=0)
    run_cli(*args, "--out", tmp_path / "local", check=0)
    for hook in ("resid_mid", "mlp_out"):
        a, b = _arrays(tmp_path / "local" / hook), _arrays(f"s3://sagsae-test/lm/{hook}")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{hook} {k}")


def test_torchrun_resume_when_only_rank_0_has_the_run_directory(tmp_path, s3):
    """Each rank runs in its own directory (as on two nodes without a shared file system), so only
    rank 0 sees the checkpoint after a kill: the resumed run must still match one uninterrupted
    process replaying the same batches."""
    url = "s3://sagsae-test/resume"
    run_cli("harvest", "--source", "synthetic", "--out", url, "--tokens", 20_000, "--eval-tokens", 100,
            "--quiet", check=0)  # fmt: skip
    args = ["train", "--store", url, "--variant", "sa-gsae", "--width", 32, "--l1", 0.4, "--tokens", 40_000,
            "--batch", 1000, "--lr", 2e-3, "--checkpoint-every", 10, "--quiet", "--out", "runs"]  # fmt: skip
    for r in (0, 1):
        (tmp_path / f"node{r}").mkdir()
    wrapper = tmp_path / "node.sh"  # cd into this rank's own "node" before starting sagsae
    wrapper.write_text(f'cd {tmp_path}/node$LOCAL_RANK && exec {sys.executable} -m sagsae_cli "$@"\n')
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "--no-python", "bash", str(wrapper), *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(launch, capture_output=True, text=True, timeout=600,
                            env={**env, "SAGSAE_FAULT": "checkpoint:2"})  # fmt: skip
    assert killed.returncode != 0
    run = "sa-gsae-w32-l1_0.4-s0"
    assert (tmp_path / "node0" / "runs" / run / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "node1" / "runs").exists()  # rank 1 never writes the run directory
    resumed = subprocess.run(launch, capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_cli(*args[:-1], tmp_path / "single", "--data-shards", 2, check=0)
    a = load_file(str(tmp_path / "node0" / "runs" / run / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "single" / run / "sae_weights.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-4, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
