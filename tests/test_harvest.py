import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, nan_weights_copy, run_cli, write_corpus

from sagsae_cli.data import iter_windows
from sagsae_cli.hooks import parse_hook, run_to_layer
from sagsae_cli.models import load_model
from sagsae_cli.store import open_store

FAMILIES = ["neox-parallel", "neox-sequential", "llama", "gemma2", "gpt2"]
# every family hooks.FAMILIES declares, each with a tiny random model (the identities below can fail
# for a family whose hookpoints sit in the wrong places, as OLMo2's post-norms did)
MORE = ["olmo2", "phi3", "qwen2", "qwen3", "gemma3_text", "mistral"]
ALL = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {f: make_tiny_model(f, root / f) for f in FAMILIES + MORE}


@pytest.mark.parametrize("family", FAMILIES + MORE)
def test_hookpoint_identities(tiny, family):
    model, tok, _ = load_model(str(tiny[family]))
    ids = torch.randint(4, 290, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = run_to_layer(model, ids, ALL, layer=2)
    assert torch.allclose(a["resid_pre"] + a["attn_out"], a["resid_mid"], atol=1e-5)
    if family == "neox-parallel":
        assert torch.allclose(a["resid_pre"] + a["attn_out"] + a["mlp_out"], a["resid_post"], atol=1e-5)
    else:
        assert torch.allclose(a["resid_mid"] + a["mlp_out"], a["resid_post"], atol=1e-5)
    # resid_post of layer 2 is resid_pre of layer 3, and hidden_states agree with the full forward
    with torch.no_grad():
        b = run_to_layer(model, ids, ["resid_pre"], layer=3)
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(a["resid_post"], b["resid_pre"], atol=1e-6)
    assert torch.allclose(a["resid_pre"], hidden[2], atol=1e-5)


def test_forward_stops_after_the_hooked_layer(tiny):
    model, _, _ = load_model(str(tiny["llama"]))
    called = []
    h = model.model.layers[3].register_forward_hook(lambda *a: called.append(3))
    h2 = model.lm_head.register_forward_hook(lambda *a: called.append("head"))
    run_to_layer(model, torch.randint(4, 290, (1, 9)), ["resid_mid"], layer=1)
    h.remove()
    h2.remove()
    assert called == []


def test_stored_rows_equal_a_direct_forward(tiny, corpus, tmp_path):
    run_cli("harvest", "--model", tiny["llama"], "--dataset", corpus, "--hook", "mlp_out", "--layer", 1,
            "--context", 16, "--tokens", 600, "--eval-tokens", 150, "--batch-size", 4, "--out", tmp_path / "s",
            "--quiet", check=0)  # fmt: skip
    s = open_store(tmp_path / "s")
    assert s.rows("train") == 600 and s.rows("eval") == 150 and s.complete
    assert s.dtype == "bfloat16"  # the default for model activations (docs/METHOD.md §8)
    assert s.meta["hook_name"] == "blocks.1.hook_mlp_out" and s.meta["layer"] == 1
    model, tok, _ = load_model(str(tiny["llama"]))
    windows = list(iter_windows(str(corpus), tok, 16, eval_windows=11))  # ceil(150/15) + 5% slack
    train = torch.tensor([w for split, w in windows if split == "train"][:40])
    with torch.no_grad():
        direct = run_to_layer(model, train, ["mlp_out"], layer=1)["mlp_out"][:, 1:].reshape(-1, 32)
    # the forward's rows rounded to bfloat16, exactly (the model itself ran in float32)
    assert torch.equal(s.read("train", 0, 600), direct[:600].bfloat16().float())
    assert (s.read_index("train", "positions", 0, 600) >= 1).all()  # BOS position skipped
    np.testing.assert_array_equal(s.read_index("train", "token_ids", 0, 15), train[0, 1:].numpy())
    eval_seq = set(s.read_index("eval", "sequence_ids", 0, 150).tolist())
    assert not eval_seq & set(s.read_index("train", "sequence_ids", 0, 600).tolist())


def _harvest_args(model, corpus, out):
    return ["harvest", "--model", model, "--dataset", corpus, "--hook", "resid_mid,attn_out", "--context", 32,
            "--tokens", 20_000, "--eval-tokens", 2000, "--batch-size", 2, "--out", out, "--quiet"]  # fmt: skip


def test_sigkill_then_resume_equals_uninterrupted(tiny, corpus, tmp_path):
    run_cli(*_harvest_args(tiny["neox-parallel"], corpus, tmp_path / "ref"), check=0)
    out = tmp_path / "killed"
    # commit after every batch and die right after the 121st store commit (an odd one: resid_mid has
    # committed that round, attn_out has not), so the kill lands mid-harvest on any machine
    env = {**os.environ, "SAGSAE_COMMIT_SECONDS": "0", "SAGSAE_FAULT": "commit:121"}
    p = subprocess.run(
        [sys.executable, "-m", "sagsae_cli", *map(str, _harvest_args(tiny["neox-parallel"], corpus, out))],
        env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == -signal.SIGKILL
    partial = open_store(out / "resid_mid")
    assert not partial.complete and 0 < partial.rows("train") < 20_000
    assert open_store(out / "attn_out").rows("train") < partial.rows("train")  # killed between the two
    run_cli(*_harvest_args(tiny["neox-parallel"], corpus, out), check=0)
    for hook in ("resid_mid", "attn_out"):
        a, b = open_store(tmp_path / "ref" / hook), open_store(out / hook)
        assert b.complete and a.commit_state["rows"] == b.commit_state["rows"]
        for split in ("train", "eval"):
            for name in ("acts", "token_ids", "positions", "sequence_ids"):
                np.testing.assert_array_equal(a.array(split, name)[:], b.array(split, name)[:])
        assert a.norm_factor == pytest.approx(b.norm_factor, rel=1e-12)
        assert "parallel" in a.meta["hook_definition"] or hook == "attn_out"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-alias"], "unknown model 'no-such-alias'"),
        (["--hook", "resid_middle"], "unknown hook 'resid_middle'"),
        (["--layer", "99"], "out of range"),
        (["--dataset", "/nonexistent/dir"], "does not exist"),
        (["--model", "someorg/somemodel"], "cannot load model"),
    ],
)
def test_bad_input(tiny, corpus, tmp_path, args, message):
    base = {
        "--model": str(tiny["llama"]),
        "--dataset": str(corpus),
        "--out": str(tmp_path / "s"),
        "--tokens": "100",
    }
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "sagsae_cli", "harvest", "--quiet", *sum(base.items(), ())],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr and "Traceback" not in p.stderr


def test_empty_and_unreadable_datasets(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    p = run_cli("harvest", "--model", tiny["llama"], "--dataset", tmp_path / "empty", "--out", tmp_path / "s",
                "--quiet", check=2)  # fmt: skip
    assert "empty" in p.stderr or "no windows" in p.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    p = run_cli(
        "harvest", "--model", tiny["llama"], "--dataset", bad, "--out", tmp_path / "s2", "--quiet", check=2
    )
    assert "cannot read" in p.stderr and "Traceback" not in p.stderr


def test_broken_models_are_one_line_errors(tiny, corpus, tmp_path):
    import shutil

    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in tiny["llama"].iterdir():
        if not f.name.startswith("tokenizer"):
            shutil.copy(f, no_tok)
    p = run_cli(
        "harvest", "--model", no_tok, "--dataset", corpus, "--out", tmp_path / "s1", "--quiet", check=2
    )
    assert "tokenizer files" in p.stderr and "Traceback" not in p.stderr
    # NaN weights: every row would fail the norm filter (NaN <= x is False), leaving an empty store
    nan = nan_weights_copy(tiny["llama"], tmp_path / "nan_weights")
    args = ["--dataset", corpus, "--layer", 1, "--tokens", 200, "--eval-tokens", 0, "--quiet"]
    p = run_cli("harvest", "--model", nan, "--hook", "mlp_out", "--out", tmp_path / "s2", *args, check=2)
    assert "NaN or inf (window 0, position 1)" in p.stderr and "Traceback" not in p.stderr


def test_tl_hook_names():
    assert parse_hook("blocks.8.hook_resid_mid", None) == ("resid_mid", 8)
    assert parse_hook("mlp_out", 3) == ("mlp_out", 3)
