import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def run_cli(*args, check=None, timeout=600):
    """Run `python -m sagsae_cli ARGS` in a subprocess; returns CompletedProcess."""
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run(
        [sys.executable, "-m", "sagsae_cli", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    if check is not None:
        assert p.returncode == check, f"rc={p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
    return p


@pytest.fixture
def cli():
    return run_cli


def write_indexed_store(path: Path, n_train=5000, n_eval=700, d=8, chunk_rows=256, dtype="float32"):
    """A store whose column 0 holds the row index, so readers' coverage can be checked."""
    from sagsae_cli.store import StoreWriter

    with StoreWriter(path, d=d, dtype=dtype, config={"test": 1}, chunk_rows=chunk_rows) as w:
        for split, n in (("train", n_train), ("eval", n_eval)):
            x = np.random.default_rng(0).normal(size=(n, d)).astype("float32")
            x[:, 0] = np.arange(n)
            for a in range(0, n, 1000):
                w.append(split, x[a : a + 1000])
                w.commit()
        w.commit(complete=True)
    return path
