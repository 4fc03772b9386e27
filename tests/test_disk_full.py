"""A full disk is bad input too: one line, exit 2, nothing committed lost, and the same command
resumes once there is room. A file-size limit (RLIMIT_FSIZE, EFBIG) stands in for a full disk:
writes fail the same way (ENOSPC is handled by the same code), without filling a real filesystem."""

import resource
import subprocess

import numpy as np
from conftest import run_cli
from safetensors.torch import load_file

from sagsae_cli.store import open_store


def _run_limited(*args, limit: int) -> subprocess.CompletedProcess:
    def cap_file_size():  # Python ignores SIGXFSZ, so a write past the cap fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return run_cli(*args, preexec_fn=cap_file_size, timeout=300)


def _refused(p: subprocess.CompletedProcess, what: str) -> None:
    assert p.returncode == 2, p.stderr[-3000:]
    assert "no space left to write" in p.stderr and what in p.stderr and "File too large" in p.stderr, (
        p.stderr
    )
    assert "Traceback" not in p.stderr


def test_full_disk_is_one_line_and_the_same_command_resumes(tmp_path):
    harvest = ["harvest", "--source", "synthetic", "--tokens", 40_000, "--eval-tokens", 2_000, "--quiet"]
    _refused(_run_limited(*harvest, "--out", tmp_path / "s", limit=200_000), "store")
    run_cli(*harvest, "--out", tmp_path / "s", check=0)  # room again: the same command finishes
    run_cli(*harvest, "--out", tmp_path / "ref", check=0)
    a, b = open_store(tmp_path / "s"), open_store(tmp_path / "ref")
    assert a.complete and a.rows("train") == b.rows("train") == 40_000
    np.testing.assert_array_equal(a.array("train", "acts")[:], b.array("train", "acts")[:])

    train = ["train", "--store", tmp_path / "s", "--width", 256, "--tokens", 20_000, "--batch", 1_000,
             "--checkpoint-every", 5, "--quiet"]  # fmt: skip
    # the first write past the cap is a snapshot or the checkpoint, both under checkpoints/
    _refused(_run_limited(*train, "--out", tmp_path / "runs", limit=100_000), "/checkpoints/")
    run_cli(*train, "--out", tmp_path / "runs", check=0)
    run_cli(*train, "--out", tmp_path / "ref_runs", check=0)
    run = "sa-gsae-w256-l1_0.4-s0"
    got, want = (load_file(str(tmp_path / d / run / "sae_weights.safetensors")) for d in ("runs", "ref_runs"))
    assert got.keys() == want.keys() and all(np.array_equal(got[k].numpy(), want[k].numpy()) for k in got)
