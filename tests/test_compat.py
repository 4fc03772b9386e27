"""Runs written by an earlier release still load, evaluate and resume (tests/fixtures/runs-0.2.0): a
finished SA-GSAE run with snapshots, and a Gated run stopped at step 10 of 32, which resumes to the
same weights as an uninterrupted run of today's code."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from sagsae_cli.sae import load_sae

FIXTURE = Path(__file__).parent / "fixtures" / "runs-0.2.0"
GATED = ["--variant", "gated", "--width", 24, "--l1", 0.1, "--tokens", "8k", "--batch", 256, "--checkpoint-every", 10,
         "--snapshots", 0, "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    store = root / "store"
    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 12, "--tokens", "4k", "--eval-tokens", "1k",
            "--out", store, "--quiet", check=0)  # fmt: skip
    runs = root / "runs"
    shutil.copytree(FIXTURE, runs, ignore=shutil.ignore_patterns("README.md"))
    for record in runs.glob("*/train_cfg.json"):  # the store moved: the records point at its new place
        cfg = json.loads(record.read_text())
        cfg["store"], cfg["extra"]["store"] = str(store), str(store.resolve())
        record.write_text(json.dumps(cfg, indent=2))
    return store, runs


def test_a_finished_run_of_0_2_0_loads_and_evaluates(old, tmp_path):
    store, runs = old
    sae, s = load_sae(runs / "sa-gsae-w24-l1_0.1-s0")
    assert sae.cfg.architecture == "sa-gsae" and sae.cfg.d_sae == 24 and s > 0
    run_cli("eval", runs / "sa-gsae-w24-l1_0.1-s0", "--results", tmp_path / "r", "--eval-tokens", "1k", "--checkpoints",
            "--quiet", check=0)  # fmt: skip
    import pandas as pd

    row = pd.concat(pd.read_parquet(p) for p in (tmp_path / "r" / "eval").glob("*.parquet"))
    assert len(row) == 1 and 0.0 < float(row.r2.iloc[0]) <= 1.0
    snaps = pd.concat(pd.read_parquet(p) for p in (tmp_path / "r" / "checkpoints").glob("*.parquet"))
    assert sorted(snaps.tokens) == [1280, 2816]  # the two snapshots the run kept


def test_an_interrupted_run_of_0_2_0_resumes_to_the_uninterrupted_weights(old, tmp_path):
    store, runs = old
    run_cli("train", "--store", store, "--out", runs, *GATED, check=0)
    run_cli("train", "--store", store, "--out", tmp_path / "fresh", *GATED, check=0)
    resumed = load_file(str(runs / "gated-w24-l1_0.1-s0" / "sae_weights.safetensors"))
    fresh = load_file(str(tmp_path / "fresh" / "gated-w24-l1_0.1-s0" / "sae_weights.safetensors"))
    assert resumed.keys() == fresh.keys()
    for name in fresh:
        assert torch.equal(resumed[name], fresh[name]), name
