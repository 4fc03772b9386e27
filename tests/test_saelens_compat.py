"""SAELens loads our baseline exports and computes what we compute (raw activations, folded norm).

SAELens lives in its own environment (it pins transformer-lens); point SAGSAE_SAELENS_PYTHON at a
Python that has sae-lens to run this test, e.g.:
    python3 -m venv /tmp/sl && /tmp/sl/bin/pip install torch==2.13.0 sae-lens
    SAGSAE_SAELENS_PYTHON=/tmp/sl/bin/python python -m pytest tests/test_saelens_compat.py
"""

import os
import subprocess

import pytest
import torch

from sagsae_cli.sae import SAEConfig, build_sae, load_sae

PY = os.environ.get("SAGSAE_SAELENS_PYTHON")
pytestmark = pytest.mark.skipif(not PY, reason="set SAGSAE_SAELENS_PYTHON to a Python with sae-lens")

CHECK = """
import sys, torch
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1], device="cpu")
ref = torch.load(sys.argv[1] + "/ref.pt")
f = sae.encode(ref["x"])
print(type(sae).__name__, float((f - ref["f"]).abs().max()), float((sae.decode(f) - ref["x_hat"]).abs().max()))
"""


@pytest.mark.parametrize("name, cls", [("relu", "StandardSAE"), ("gated", "GatedSAE"), ("topk", "TopKSAE"),
                                       ("jumprelu", "JumpReLUSAE")])  # fmt: skip
def test_saelens_loads_our_export(tmp_path, name, cls):
    sae = build_sae(name, SAEConfig(architecture="", d_in=16, d_sae=32, l1=0.3, k=4), seed=1)
    with torch.no_grad():
        for n, p in sae.named_parameters():
            if n not in ("W_enc", "W_dec"):
                p.add_(0.1 * torch.randn_like(p))
    sae.save(tmp_path, norm_factor=2.0)
    raw, _ = load_sae(tmp_path, normalised=False)
    x = 2.0 * torch.randn(8, 16)
    with torch.no_grad():
        f = raw.encode(x)
        torch.save({"x": x, "f": f, "x_hat": raw.decode(f)}, tmp_path / "ref.pt")
    p = subprocess.run([PY, "-c", CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got_cls, df, dx = p.stdout.split()[-3:]
    assert got_cls == cls and float(df) < 1e-5 and float(dx) < 1e-5
