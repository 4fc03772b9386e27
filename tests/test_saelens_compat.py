"""SAELens loads our baseline exports and computes what we compute (raw activations, folded norm).

SAELens lives in its own environment (it pins transformer-lens); point SAGSAE_SAELENS_PYTHON at a
Python that has sae-lens to run this test, e.g.:
    python3 -m venv /tmp/sl && /tmp/sl/bin/pip install torch==2.13.0 sae-lens
    SAGSAE_SAELENS_PYTHON=/tmp/sl/bin/python python -m pytest tests/test_saelens_compat.py
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from sagsae_cli.sae import SAEConfig, build_sae, load_sae

PY = os.environ.get("SAGSAE_SAELENS_PYTHON")
pytestmark = pytest.mark.skipif(not PY, reason="set SAGSAE_SAELENS_PYTHON to a Python with sae-lens")

CHECK = """
import json, sys, torch
import sagsae_cli.saelens  # registers sa-gsae
from sae_lens import SAE
out = {}
for path in sys.argv[1:]:
    sae = SAE.load_from_disk(path, device="cpu")
    ref = torch.load(path + "/ref.pt")
    f = sae.encode(ref["x"])
    out[path] = [type(sae).__name__, float((f - ref["f"]).abs().max()),
                 float((sae.decode(f) - ref["x_hat"]).abs().max())]
print(json.dumps(out))
"""
CASES = [("relu", "StandardSAE"), ("gated", "GatedSAE"), ("topk", "TopKSAE"), ("jumprelu", "JumpReLUSAE"),
         ("sa-gsae", "SAGSAE"), ("sa-gsae-untied", "SAGSAE"), ("one-sided", "SAGSAE"),
         ("sa-gsae-split", "SAGSAE")]  # fmt: skip


def _export(path, name):
    sae = build_sae(name, SAEConfig(architecture="", d_in=16, d_sae=32, l1=0.3, k=4), seed=1)
    with torch.no_grad():
        for n, p in sae.named_parameters():
            if n not in ("W_enc", "W_dec"):
                p.add_(0.1 * torch.randn_like(p))
    sae.save(path, norm_factor=2.0)
    raw, _ = load_sae(path, normalised=False)
    x = 2.0 * torch.randn(8, 16)
    with torch.no_grad():
        f = raw.encode(x)
        torch.save({"x": x, "f": f, "x_hat": raw.decode(f)}, path / "ref.pt")
    if name.startswith("sa-gsae"):  # both signs must occur for the check to mean much
        assert (f > 0).any() and (f < 0).any()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Every architecture exported by sagsae, loaded by SAELens in its own Python (one process)."""
    root = tmp_path_factory.mktemp("saelens")
    for name, _ in CASES:
        _export(root / name, name)
    here = str(Path(__file__).resolve().parents[1])  # sagsae_cli importable in SAELens's environment
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([PY, "-c", CHECK, *(str(root / n) for n, _ in CASES)], capture_output=True, text=True,
                       timeout=600, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    return {Path(k).name: v for k, v in got.items()}


@pytest.mark.parametrize("name, cls", CASES)
def test_saelens_loads_our_export(loaded, name, cls):
    """SAELens's SAE.load_from_disk gives the class we expect and reproduces our codes and
    reconstructions on raw activations (norm factor folded) to 1e-5."""
    got_cls, df, dx = loaded[name]
    assert got_cls == cls and df < 1e-5 and dx < 1e-5
