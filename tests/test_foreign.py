"""SAEs made elsewhere: files written by SAELens, sparsify and dictionary_learning themselves (in the second
Python that CI builds, SAGSAE_SAELENS_PYTHON, where they install beside torch), read by sagsae_cli.foreign;
our forward equals the library's forward on the same rows. Then `sagsae eval --store` on them (R² equals a
computation by hand from the raw rows), the store check, and the opposed-pairs census on synthetic ground
truth with known antipodal pairs.

dictionary_learning 0.1.0's package __init__ imports nnsight, so the library's own dictionary.py is loaded
as a module by path (its classes need only torch and einops); AutoEncoderTopK lives beside its trainer,
whose imports need the package, so its fixture is built from the layout in
dictionary_learning/trainers/top_k.py (encoder: nn.Linear, decoder: nn.Linear without bias, b_dec, k buffer).
"""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli, run_inproc
from test_bad_input import one_line_error

from sagsae_cli.foreign import detect, load_foreign

PY = os.environ.get("SAGSAE_SAELENS_PYTHON")
needs_libs = pytest.mark.skipif(
    not PY, reason="set SAGSAE_SAELENS_PYTHON to a Python with sae-lens and sparsify"
)

WRITE = r"""
import json, sys, importlib.util, torch
from pathlib import Path
root = Path(sys.argv[1]); torch.manual_seed(0)
x = 3.0 * torch.randn(64, 16) + 0.5
done = {}

def noisy(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))

def ref(path, f, x_hat):
    torch.save({"x": x, "f": f.detach().float(), "x_hat": x_hat.detach().float()}, path / "ref.pt")

# --- SAELens: every inference architecture, and the options that change the forward pass
from sae_lens import (StandardSAE, StandardSAEConfig, GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig,
                      TopKSAE, TopKSAEConfig)
cases = {
    "sl-standard": (StandardSAE, StandardSAEConfig, {}),
    "sl-standard-nob": (StandardSAE, StandardSAEConfig, {"apply_b_dec_to_input": False}),
    "sl-standard-cnr": (StandardSAE, StandardSAEConfig, {"normalize_activations": "constant_norm_rescale"}),
    "sl-standard-ln": (StandardSAE, StandardSAEConfig, {"normalize_activations": "layer_norm"}),
    "sl-gated": (GatedSAE, GatedSAEConfig, {}),
    "sl-jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    "sl-topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
    "sl-bf16": (StandardSAE, StandardSAEConfig, {"dtype": "bfloat16"}),
}
for name, (cls, cfg_cls, kw) in cases.items():
    cfg = cfg_cls(d_in=16, d_sae=40, **kw)
    cfg.metadata.model_name, cfg.metadata.hook_name = "test-model", "blocks.3.hook_mlp_out"
    sae = cls(cfg)
    noisy(sae)
    if name == "sl-jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(40))
    path = root / name
    sae.save_model(path)
    with torch.no_grad():
        f = sae.encode(x.to(sae.dtype))
        ref(path, f, sae.decode(f))

# --- sparsify: TopK and GroupMax SparseCoders, saved with their own save_to_disk
from sparsify import SparseCoder, SparseCoderConfig
for name, kw in {"sp-topk": {"k": 6}, "sp-groupmax": {"k": 5, "activation": "groupmax"}}.items():
    sc = SparseCoder(16, SparseCoderConfig(num_latents=40, **kw))
    noisy(sc)
    path = root / "sparsify" / name  # a checkpoint: one folder per hookpoint
    sc.save_to_disk(path)
    with torch.no_grad():
        enc = sc.encode(x)
        f = torch.zeros(64, 40).scatter_(-1, enc.top_indices, enc.top_acts)
        ref(path, f, sc.decode(enc.top_acts, enc.top_indices))

# --- dictionary_learning: its dictionary.py, loaded by path
src = Path(next(iter(importlib.util.find_spec("dictionary_learning").submodule_search_locations))) / "dictionary.py"
spec = importlib.util.spec_from_file_location("dl_dictionary", src)
dl = importlib.util.module_from_spec(spec); spec.loader.exec_module(dl)
for name, make, cls in (("dl-standard", lambda: dl.AutoEncoder(16, 40), "AutoEncoder"),
                        ("dl-gated", lambda: dl.GatedAutoEncoder(16, 40), "GatedAutoEncoder"),
                        ("dl-jumprelu", lambda: dl.JumpReluAutoEncoder(16, 40), "JumpReluAutoEncoder")):
    ae = make()
    noisy(ae)
    if cls == "JumpReluAutoEncoder":
        with torch.no_grad():
            ae.threshold.copy_(torch.rand(40))
    path = root / name
    path.mkdir()
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": cls, "activation_dim": 16,
        "dict_size": 40, "layer": 3, "lm_name": "test-model", "submodule_name": "blocks.3.hook_mlp_out"}}))
    with torch.no_grad():
        f = ae.encode(x)
        ref(path, f, ae.decode(f))
print("ok")
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    p = subprocess.run([PY, "-c", WRITE, str(root)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-3000:]
    return root


SAES = ["sl-standard", "sl-standard-nob", "sl-standard-cnr", "sl-standard-ln", "sl-gated", "sl-jumprelu",
        "sl-topk", "sl-bf16", "sparsify/sp-topk", "sparsify/sp-groupmax", "dl-standard", "dl-gated", "dl-jumprelu"]  # fmt: skip


@needs_libs
@pytest.mark.parametrize("name", SAES)
def test_our_forward_equals_the_librarys(made, name):
    path = made / name
    fs = load_foreign(path)
    ref = torch.load(path / "ref.pt")
    f, x_hat = fs.forward(ref["x"])
    tol = 2e-2 if name == "sl-bf16" else 1e-4  # bf16: the library computes in bf16, we in float32
    scale = ref["x_hat"].abs().max()
    assert (f - ref["f"]).abs().max() <= tol * ref["f"].abs().max() + 1e-5, name
    assert (x_hat - ref["x_hat"]).abs().max() <= tol * scale + 1e-5, name
    assert (f != 0).any() and (f == 0).any()  # the check means something: codes are sparse, not empty
    assert fs.source == {"sl": "saelens", "sp": "sparsify", "dl": "dictionary_learning"}[Path(name).name[:2]]


def test_dictionary_learning_topk_layout(tmp_path):
    """AutoEncoderTopK from dictionary_learning/trainers/top_k.py's layout: f = TopK(ReLU(encoder(x - b_dec))),
    x_hat = decoder(f) + b_dec (computed here with nn.Linear, as that class does)."""
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(16, 40), torch.nn.Linear(40, 16, bias=False)
    b_dec = torch.randn(16)
    state = {"encoder.weight": enc.weight.detach(), "encoder.bias": enc.bias.detach(), "decoder.weight":
             dec.weight.detach(), "b_dec": b_dec, "k": torch.tensor(4, dtype=torch.int), "threshold": torch.tensor(-1.0)}  # fmt: skip
    torch.save(state, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoderTopK", "k": 4}}))
    x = torch.randn(32, 16)
    with torch.no_grad():
        post = torch.relu(enc(x - b_dec))
        top = post.topk(4, dim=-1)
        f = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
        x_hat = dec(f) + b_dec
    got_f, got_x = load_foreign(tmp_path).forward(x)
    assert torch.allclose(got_f, f, atol=1e-6) and torch.allclose(got_x, x_hat, atol=1e-5)
    assert ((got_f != 0).sum(-1) <= 4).all()


def test_detect_names_what_it_cannot_read(tmp_path, capsys):
    (tmp_path / "ckpt" / "layers.3").mkdir(parents=True)
    (tmp_path / "ckpt" / "layers.3" / "sae.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match="one folder per hookpoint; give one of layers.3"):
        detect(tmp_path / "ckpt")
    with pytest.raises(Exception, match="not an SAE directory"):
        detect(tmp_path)


# --- eval on a store -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fstore")
    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 12, "--tokens", "20k", "--eval-tokens", "3k",
            "--out", root / "store", "--quiet", check=0)  # fmt: skip
    return root / "store"


@needs_libs
@pytest.mark.parametrize("name", ["sl-standard", "sl-topk", "sparsify/sp-topk", "dl-gated"])
def test_eval_on_a_store_matches_r2_computed_by_hand(made, store, tmp_path, capsys, name):
    """The SAE acts on raw activations; the store holds normalised rows and their factor: R², L0 and dead
    fraction from `eval --store` equal a computation from the raw rows with the library's own outputs'
    formulas (sum of squared errors over total variance, both in float64)."""
    from sagsae_cli.store import open_store

    res = tmp_path / "res"
    p = run_inproc("eval", made / name, "--store", store, "--results", res, "--allow-mismatch", "--quiet",
                   capsys=capsys)  # fmt: skip
    assert p.returncode == 0, p.stderr
    row = pd.concat(pd.read_parquet(x) for x in (res / "eval").glob("*.parquet")).iloc[0]
    s = open_store(store)
    raw = s.read("eval", 0, s.rows("eval"), normalise=False).double()
    f, x_hat = load_foreign(made / name).forward(raw.float())
    err = ((raw - x_hat.double()) ** 2).sum()
    tot = ((raw - raw.mean(0)) ** 2).sum()
    assert row.r2 == pytest.approx(float(1 - err / tot), abs=1e-5)
    assert row.l0 == pytest.approx(float((f != 0).sum(-1).double().mean()), rel=1e-6)
    assert row.source == load_foreign(made / name).source and row.variant.endswith(
        load_foreign(made / name).architecture
    )
    assert row.width == 40 and "opposed_pair_share" in row


@needs_libs
def test_eval_refuses_a_mismatched_store(made, store, tmp_path, capsys):
    # d: 16 against a store of d 12
    run_cli("harvest", "--source", "synthetic", "--d", 12, "--n-axes", 8, "--tokens", "5k", "--eval-tokens", "1k",
            "--out", tmp_path / "s12", "--quiet", check=0)  # fmt: skip
    one_line_error(run_inproc("eval", made / "sl-standard", "--store", tmp_path / "s12", "--results", tmp_path / "r",
                              capsys=capsys), "d_in=16", "d=12")  # fmt: skip
    # the recorded model differs from the store's (synthetic): refused unless --allow-mismatch
    line = one_line_error(run_inproc("eval", made / "sl-standard", "--store", store, "--results", tmp_path / "r",
                                     capsys=capsys), "test-model", "--allow-mismatch")  # fmt: skip
    assert "model" in line
    # without --store, an SAE made elsewhere has no store to read
    one_line_error(
        run_inproc("eval", made / "sl-standard", "--results", tmp_path / "r", capsys=capsys), "--store"
    )


# --- opposed pairs ---------------------------------------------------------------------------------------------
def test_opposed_pairs_in_blocks_equal_the_full_matrix():
    from sagsae_cli.metrics import opposed_pairs

    torch.manual_seed(0)
    w = torch.randn(300, 8)
    w[150:] = -w[:150] + 0.05 * torch.randn(150, 8)  # 150 nearly opposite pairs
    full = (
        torch.nn.functional.normalize(w.double(), dim=1) @ torch.nn.functional.normalize(w.double(), dim=1).T
    )
    i, j = torch.nonzero(torch.triu(full <= -0.9, diagonal=1), as_tuple=True)
    got = opposed_pairs(w, 0.9, block=7)
    assert sorted(zip(got[:, 0].long().tolist(), got[:, 1].long().tolist())) == sorted(
        zip(i.tolist(), j.tolist())
    )
    assert torch.allclose(got[:, 2], full[got[:, 0].long(), got[:, 1].long()])
    assert len(got) >= 150
    live = torch.zeros(300, dtype=torch.bool)
    live[:150] = True  # one side of every planted pair is live: only chance pairs among the first 150 remain
    chance = {(a, b) for a, b in zip(i.tolist(), j.tolist()) if b < 150}
    got = opposed_pairs(w, 0.9, live=live, block=7)
    assert set(zip(got[:, 0].long().tolist(), got[:, 1].long().tolist())) == chance and len(chance) < 150


@pytest.mark.parametrize("paired, expect", [(1.0, "many"), (0.0, "none")])
def test_pairs_on_synthetic_ground_truth(tmp_path, capsys, paired, expect):
    """Protocol A (every axis carries two antipodal features that never fire together): a Gated SAE at 2x
    the features' count learns separate latents for +v and -v, and `sagsae pairs` finds them: at least
    two thirds of the 12 true pairs, and never more than 12 plus one per 10 latents. On data with no
    antipodal features (every axis one-sided) it finds none."""
    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 12, "--paired-fraction", paired,
            "--l0", 1.5, "--tokens", "60k", "--eval-tokens", "6k", "--out", tmp_path / "s", "--quiet", check=0)  # fmt: skip
    run_cli("train", "--store", tmp_path / "s", "--out", tmp_path / "r", "--variant", "gated", "--width", 48,
            "--l1", 0.8, "--tokens", "150k", "--batch", 256, "--quiet", check=0)  # fmt: skip
    run = tmp_path / "r" / "gated-w48-l1_0.8-s0"
    p = run_inproc("pairs", run, "--out", tmp_path / "pairs.parquet", capsys=capsys)
    assert p.returncode == 0, p.stderr
    table = pd.read_parquet(tmp_path / "pairs.parquet")
    opposed = table[table.opposed]
    if expect == "many":
        assert 8 <= len(opposed) <= 12 + 48 // 10, table
        assert (opposed.cos <= -0.9).all() and (opposed.cofire <= 0.05).all()
        assert (opposed.freq_i > 0).all() and (opposed.freq_j > 0).all()
        # each found pair points along one true axis
        from sagsae_cli.sae import load_sae
        from sagsae_cli.store import open_store

        axes = torch.from_numpy(open_store(tmp_path / "s").truth()["axes"]).double()
        w = torch.nn.functional.normalize(load_sae(run)[0].W_dec.detach().double(), dim=1)
        best = (w[opposed.i.to_numpy().copy()] @ axes.T).abs().max(1).values
        assert (best > 0.9).all()
        _browse_shows_the_pairs(run, tmp_path, capsys, opposed)
    else:
        assert len(opposed) == 0, opposed
    # the summary in eval's row says the same
    run_inproc("eval", run, "--results", tmp_path / "res", "--quiet", capsys=capsys)
    row = pd.concat(pd.read_parquet(x) for x in (tmp_path / "res" / "eval").glob("*.parquet")).iloc[0]
    assert row.opposed_pairs == len(opposed)
    assert row.opposed_pair_share == pytest.approx(
        len(set(opposed.i) | set(opposed.j)) / ((1 - row.dead_frac) * 48)
    )


def test_pairs_cli_refuses_bad_input(tmp_path, capsys):
    one_line_error(
        run_inproc("pairs", tmp_path, "--out", tmp_path / "p.parquet", capsys=capsys), "not an SAE"
    )
    for flag, value in (("--cos", "1.5"), ("--cos", "0"), ("--max-cofire", "-1")):
        one_line_error(
            run_inproc("pairs", tmp_path, "--out", tmp_path / "p.parquet", flag, value, capsys=capsys), flag
        )


def _browse_shows_the_pairs(run, tmp_path, capsys, opposed):
    """browse lists the run's opposed pairs (the same as `sagsae pairs`) and shows a pair's two latents side
    by side (in a real browser where chromium is installed)."""
    site = tmp_path / "site"
    p = run_inproc("browse", run, "--out", site, "--quiet", "--device", "cpu", capsys=capsys)
    assert p.returncode == 0, p.stderr
    manifest = json.loads((site / "data" / "manifest.js").read_text().split("(", 1)[1].rsplit(")", 1)[0])
    listed = {(q["i"], q["j"]) for q in manifest["runs"][0]["opposed"]}
    assert listed == set(zip(opposed.i, opposed.j))
    from test_browse import _chromium

    chromium = _chromium()
    if chromium is None:
        return
    playwright = pytest.importorskip("playwright.sync_api")
    i, j = sorted(listed)[0]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_default_timeout(600_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((site / "index.html").as_uri() + "#r0/opposed")
        page.wait_for_selector("#opposed tbody tr")
        assert page.locator("#opposed tbody tr").count() == len(listed)
        assert page.locator("#opposed-link").is_visible()
        page.click(f"a[href='#r0/{i}/{j}']")
        page.wait_for_selector(f"#pair[data-i='{i}'][data-j='{j}']")
        assert page.locator("#pair .side").count() == 2
        browser.close()
    assert not errors, errors


@needs_libs
@pytest.mark.parametrize("name", ["sl-gated", "dl-jumprelu"])
def test_browse_reads_an_sae_made_elsewhere(made, store, tmp_path, capsys, name):
    """browse on an SAE made elsewhere: the + side's firing counts equal those of the SAE's own forward on
    the store's raw eval rows."""
    from sagsae_cli.store import open_store

    site = tmp_path / "site"
    p = run_inproc("browse", made / name, "--store", store, "--allow-mismatch", "--out", site, "--quiet", "--device",
                   "cpu", capsys=capsys)  # fmt: skip
    assert p.returncode == 0, p.stderr
    feats = pd.read_parquet(site / "features.parquet")
    s = open_store(store)
    f = load_foreign(made / name).encode(s.read("eval", 0, s.rows("eval"), normalise=False))
    plus = feats[feats.sign == "+"].set_index("latent")["count"].sort_index()
    assert plus.tolist() == (f > 0).sum(0).tolist()
    one_line_error(run_inproc("browse", made / name, "--out", tmp_path / "x", capsys=capsys), "--store")
