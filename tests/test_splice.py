import json
import math

import pandas as pd
import pytest
import torch
from conftest import make_tiny_model, run_cli, write_corpus

from sagsae_cli.hooks import run_to_layer
from sagsae_cli.models import load_model
from sagsae_cli.splice import Splice, loss_recovered, next_token_loss

FAMS = ["llama", "neox-parallel", "gemma2", "olmo2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    return {f: make_tiny_model(f, root / f) for f in FAMS}


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("hook", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
def test_identity_recovers_everything_and_zero_nothing(tiny, family, hook):
    model, _, _ = load_model(str(tiny[family]))
    ids = torch.randint(4, 290, (4, 12), generator=torch.Generator().manual_seed(1))
    out = loss_recovered(model, ids, hook, 1, lambda x: x)
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], abs=1e-5)
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    out = loss_recovered(model, ids, hook, 1, torch.zeros_like)
    assert out["loss_recovered"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("hook", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
def test_splice_writes_the_hookpoint(tiny, family, hook):
    """Splice x -> 2x + 1 at a hookpoint: the hookpoint then reads 2 clean + 1 at positions >= 1 and the
    clean value at position 0, and the residual identities still hold downstream (what comes after
    the site sees the replacement)."""
    model, _, _ = load_model(str(tiny[family]))
    ids = torch.randint(4, 290, (2, 10), generator=torch.Generator().manual_seed(2))
    all_hooks = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
    with torch.no_grad():
        clean = run_to_layer(model, ids, [hook], 2)[hook]
        with Splice(model, hook, 2, lambda x: 2 * x + 1):
            spliced = run_to_layer(model, ids, all_hooks, 2)
    assert torch.allclose(spliced[hook][:, 1:], 2 * clean[:, 1:] + 1, atol=1e-4)
    assert torch.allclose(spliced[hook][:, 0], clean[:, 0], atol=1e-5)
    if hook == "resid_post":
        pass  # the block's output itself was replaced: nothing downstream in this block
    elif family == "neox-parallel":  # attention and MLP both read resid_pre
        assert torch.allclose(spliced["resid_pre"] + spliced["attn_out"] + spliced["mlp_out"],
                              spliced["resid_post"], atol=1e-4)  # fmt: skip
    else:
        assert torch.allclose(spliced["resid_mid"] + spliced["mlp_out"], spliced["resid_post"], atol=1e-4)
    if hook in ("resid_mid", "attn_out") and family != "neox-parallel":  # the MLP saw the replacement
        assert not torch.allclose(spliced["mlp_out"], run_to_layer(model, ids, ["mlp_out"], 2)["mlp_out"])
    assert math.isfinite(next_token_loss(model, ids))


def test_eval_reports_loss_recovered_on_lm_stores(tiny, tmp_path):
    corpus = write_corpus(tmp_path / "c")
    run_cli("harvest", "--model", tiny["llama"], "--dataset", corpus, "--hook", "mlp_out", "--layer", 1,
            "--context", 16, "--tokens", 3000, "--eval-tokens", 300, "--max-norm-ratio", 0, "--out", tmp_path / "s",
            "--quiet", check=0)  # fmt: skip
    run_cli("train", "--store", tmp_path / "s", "--out", tmp_path / "runs", "--width", 64, "--tokens", 6000,
            "--batch", 500, "--lr", 2e-3, "--quiet", check=0)  # fmt: skip
    run_cli(
        "eval",
        *sorted((tmp_path / "runs").iterdir()),
        "--results",
        tmp_path / "res",
        "--lr-windows",
        8,
        check=0,
    )
    cfg = json.loads(next((tmp_path / "runs").iterdir()).joinpath("cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.1.hook_mlp_out"  # the full name SAELens attaches to, layer included
    row = pd.read_parquet(next((tmp_path / "res" / "eval").glob("*.parquet"))).iloc[0]
    assert row["lr_windows"] == 8
    assert row["ce_zero"] != row["ce_clean"] and math.isfinite(row["loss_recovered"])
