"""torchrun with 2 CPU processes (gloo) against one process replaying the same global batches."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
from conftest import run_cli
from safetensors.torch import load_file


@pytest.mark.parametrize("variant", ["sa-gsae,topk"])
def test_ddp_matches_single_process_and_uneven_data_does_not_hang(tmp_path, variant):
    # 20,001 rows: shards of 10,000 and 10,001, so every epoch ends with one rank's batch empty
    run_cli("harvest", "--source", "synthetic", "--out", tmp_path / "s", "--tokens", 20_001, "--eval-tokens", 100,
            "--quiet", check=0)  # fmt: skip
    args = ["train", "--store", tmp_path / "s", "--variant", variant, "--width", 48, "--k", 4, "--l1", 0.4,
            "--tokens", 45_000, "--batch", 1000, "--lr", 2e-3, "--quiet", "--checkpoint-every", 20]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "sagsae_cli", *map(str, args), "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run_cli(*args, "--data-shards", 2, "--out", tmp_path / "single", check=0)
    for run in ("sa-gsae-w48-l1_0.4-s0", "topk-w48-k4-s0"):
        a = load_file(str(tmp_path / "ddp" / run / "sae_weights.safetensors"))
        b = load_file(str(tmp_path / "single" / run / "sae_weights.safetensors"))
        for k in a:
            assert torch.allclose(a[k], b[k], atol=2e-4, rtol=1e-4), (run, k, (a[k] - b[k]).abs().max())
    assert (ddp.stdout + ddp.stderr).count("done:") == 1  # only rank 0 reports


def _harvest_args(out, model, corpus, tokens):
    return ["harvest", "--model", model, "--dataset", corpus, "--hook", "resid_mid,mlp_out", "--layer", 1,
            "--context", 16, "--tokens", tokens, "--eval-tokens", 300, "--batch-size", 3, "--out", out, "--quiet"]  # fmt: skip


def _harvest(out, model, corpus, tokens, nproc=1):
    args = _harvest_args(out, model, corpus, tokens)
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAGSAE_COMMIT_SECONDS": "0"}
    p = subprocess.run([sys.executable, *(launch if nproc > 1 else []), "-m", "sagsae_cli", *map(str, args)],
                       capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.parametrize("tokens", [1500, 10**6])  # the target reached mid-round; the dataset exhausted
def test_torchrun_harvest_equals_single_process(tmp_path, tokens):
    from conftest import make_tiny_model, write_corpus

    import sagsae_cli.harvest as harvest_module
    from sagsae_cli import cli
    from sagsae_cli.store import open_store

    model, corpus = make_tiny_model("llama", tmp_path / "m"), write_corpus(tmp_path / "c", n_docs=12)
    two = _harvest(tmp_path / "two", model, corpus, tokens, nproc=2)
    _harvest(tmp_path / "one", model, corpus, tokens)
    assert (two.stdout + two.stderr).count("done ") == 2  # rank 0 reports each store once
    # a one-process harvest interrupted after 7 batches, then finished by 2 processes
    calls = []

    def interrupt(*args):
        calls.append(1)
        if len(calls) > 7:
            raise RuntimeError("interrupted")
        return real(*args)

    real, harvest_module._append_batch = harvest_module._append_batch, interrupt
    os.environ["SAGSAE_COMMIT_SECONDS"] = "0"
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            command = typer.main.get_command(cli.app)
            command(
                list(map(str, _harvest_args(tmp_path / "resumed", model, corpus, tokens))),
                standalone_mode=False,
            )
    finally:
        harvest_module._append_batch = real
        del os.environ["SAGSAE_COMMIT_SECONDS"]
    partial = open_store(tmp_path / "resumed" / "mlp_out")
    assert not partial.complete and 0 < partial.rows("eval") + partial.rows("train") < 1000
    _harvest(tmp_path / "resumed", model, corpus, tokens, nproc=2)
    for hook, other in itertools.product(("resid_mid", "mlp_out"), ("two", "resumed")):
        a, b = open_store(tmp_path / "one" / hook), open_store(tmp_path / other / hook)
        assert b.complete and a.commit_state["rows"] == b.commit_state["rows"]
        assert 1000 < b.rows("train") <= tokens and b.rows("eval") == 300
        for split in ("train", "eval"):
            for name in ("acts", "token_ids", "positions", "sequence_ids"):
                np.testing.assert_array_equal(a.array(split, name)[:], b.array(split, name)[:])
        assert a.norm_factor == b.norm_factor and a.meta.get("note") == b.meta.get("note")
    assert ("dataset exhausted" in a.meta.get("note", "")) == (tokens > 10**5)


def test_torchrun_bad_input_is_one_line_from_rank_0(tmp_path):
    # rank 0 alone opens and writes the stores; its refusals must reach rank 1, not leave it failing
    # inside a collective: at start (a store made with another config) and mid-run (NaN activations)
    from conftest import make_tiny_model, nan_weights_copy, write_corpus

    from sagsae_cli.store import open_store

    model, corpus = make_tiny_model("llama", tmp_path / "m"), write_corpus(tmp_path / "c", n_docs=4)
    _harvest(tmp_path / "s", model, corpus, 200)
    before = open_store(tmp_path / "s" / "mlp_out").commit_state
    nan = nan_weights_copy(model, tmp_path / "nan")
    cases = [(tmp_path / "s", model, 300, "different config"), (tmp_path / "n", nan, 200, "NaN or inf")]
    for out, m, tokens, message in cases:
        p = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "sagsae_cli", *map(str, _harvest_args(out, m, corpus, tokens))],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        text = p.stdout + p.stderr
        assert p.returncode != 0 and text.count("error: ") == 1 and message in text, text[-3000:]
        assert "[rank" not in text and text.count("Traceback") <= 1, text[-3000:]  # torchrun's own only
        assert "exitcode  : 2" in text.split("Root Cause")[1], text[-3000:]  # rank 0 failed first, code 2
    assert open_store(tmp_path / "s" / "mlp_out").commit_state == before


PROBE = """
import atexit, sys, time, torch, torch.distributed as dist
from sagsae_cli import distributed

world = distributed.init_world(torch.device("cpu"))
atexit.unregister(distributed._close)  # a group still alive when the interpreter finalises

class Sleeper:  # collected by the finalising interpreter's last gc: it releases the GIL there
    def __del__(self):
        time.sleep(0.2)

s = Sleeper(); s.cycle = s; del s
sys.setswitchinterval(30)  # no forced GIL hand-over: gloo's worker waits until the GIL is released

def last_collective():  # a rank's last collective, released by gloo's worker after we dropped it
    x = torch.zeros(4096)
    if world.main:
        dist.gather(x, [torch.empty_like(x) for _ in range(2)], dst=0)
    else:
        dist.gather(x, None, dst=0, async_op=True)
        sum(range(3 * 10**7))  # holds the GIL (no bytecode boundary) while the gather completes

last_collective()
distributed.leave(0)
"""


def test_ranks_leave_without_interpreter_finalisation(tmp_path):
    # gloo's worker releases a finished collective's tensors itself, which takes the GIL; if it asks
    # while the interpreter finalises, Python ends the thread inside a noexcept C++ frame and the
    # rank aborts (SIGABRT, "terminate called without an active exception") after a successful
    # command. The probe forces that order; without `leave` it aborted in 7 of 8 runs.
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    for _ in range(3):
        p = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert p.returncode == 0 and "terminate called" not in p.stderr, p.stderr[-3000:]
