"""torchrun with 2 CPU processes (gloo) against one process replaying the same global batches."""

import os
import subprocess
import sys

import pytest
import torch
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
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
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
