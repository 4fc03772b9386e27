"""`sagsae browse`: the per-latent, per-sign statistics against brute force on a tiny LM store with
known token ids, the site in a real headless Chromium, and bad input."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_model, run_cli, run_inproc, write_corpus
from test_bad_input import one_line_error

from sagsae_cli.browse import CONTEXT, HIST_EDGES, final_norm_scale
from sagsae_cli.models import load_model
from sagsae_cli.sae import load_sae
from sagsae_cli.store import open_store

TOP = 5


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny llama, a store of its layer-1 mlp_out with token ids, an SA-GSAE and a Gated run, a site."""
    root = tmp_path_factory.mktemp("browse")
    model = make_tiny_model("llama", root / "model")
    corpus = write_corpus(root / "corpus")
    run_cli("harvest", "--model", model, "--dataset", corpus, "--hook", "mlp_out", "--layer", 1, "--context", 16,
            "--tokens", 4000, "--eval-tokens", 600, "--max-norm-ratio", 0, "--out", root / "store", "--quiet",
            check=0)  # fmt: skip
    for variant, width in (("sa-gsae", 24), ("gated", 48)):
        run_cli("train", "--store", root / "store", "--out", root / "runs", "--variant", variant, "--width", width,
                "--l1", 0.05, "--tokens", 8000, "--batch", 250, "--quiet", check=0)  # fmt: skip
    sa, gated = root / "runs" / "sa-gsae-w24-l1_0.05-s0", root / "runs" / "gated-w48-l1_0.05-s0"
    run_cli("browse", sa, gated, "--compare", "--top", TOP, "--out", root / "site", "--quiet", check=0)
    feats = pd.read_parquet(root / "site" / "features.parquet")
    return {"root": root, "model": model, "store": root / "store", "sa": sa, "gated": gated, "site": root / "site",
            "feats": feats}  # fmt: skip


def brute_force(run: Path, store_path: Path) -> np.ndarray:
    """Every eval row's codes at once (the SAE itself, no streaming): (N, H)."""
    store = open_store(store_path)
    sae, _ = load_sae(run)
    with torch.no_grad():
        return sae.encode(store.read("eval", 0, store.rows("eval"), normalise=True)).numpy()


def test_top_k_counts_and_histograms_match_brute_force(lm):
    for run in (lm["sa"], lm["gated"]):
        f = brute_force(run, lm["store"])
        feats = lm["feats"][lm["feats"].run == run.name].set_index(["latent", "sign"])
        assert len(feats) == 2 * f.shape[1]
        for lat in range(f.shape[1]):
            for sign, col in (("+", f[:, lat]), ("-", -f[:, lat])):
                r = feats.loc[(lat, sign)]
                fired = np.sort(col[col > 0])[::-1]
                assert r["count"] == len(fired)
                assert r["freq"] == pytest.approx(len(fired) / f.shape[0])
                assert sum(r["hist"]) == len(fired)
                expected_hist = np.bincount(np.searchsorted(HIST_EDGES, fired, side="left"),
                                            minlength=len(HIST_EDGES) + 1)  # fmt: skip
                assert list(r["hist"]) == expected_hist.tolist()
                np.testing.assert_allclose(r["top_acts"], fired[:TOP], rtol=1e-5, atol=1e-7)
                # the rows named are rows where the latent has that activation
                np.testing.assert_allclose(col[np.array(r["top_rows"], dtype=int)], r["top_acts"], rtol=1e-5)
    sa = brute_force(lm["sa"], lm["store"])
    assert (sa < 0).any(), "the tiny SA-GSAE run should have negative codes for this test to mean something"


def test_minus_side_lists_the_most_negative_activations(lm):
    f = brute_force(lm["sa"], lm["store"])
    feats = lm["feats"][lm["feats"].run == lm["sa"].name].set_index(["latent", "sign"])
    lat = int(np.argmin(f.min(0)))  # the latent with the most negative code anywhere
    minus = feats.loc[(lat, "-")]
    assert minus["top_acts"][0] == pytest.approx(-f[:, lat].min(), rel=1e-5)
    assert f[minus["top_rows"][0], lat] == pytest.approx(f[:, lat].min(), rel=1e-5)


def test_contexts_are_the_firing_token_and_its_window(lm):
    store = open_store(lm["store"])
    ids = store.read_index("eval", "token_ids", 0, store.rows("eval"))
    seq = store.read_index("eval", "sequence_ids", 0, store.rows("eval"))
    _, tok, _ = load_model(str(lm["model"]))
    feats = lm["feats"][lm["feats"].run == lm["sa"].name]
    data = _site_latents(lm["site"], "r0")
    checked = 0
    for _, r in feats[feats["count"] > 0].head(12).iterrows():
        ctx = data[str(r.latent)][r.sign]["ctx"]
        assert [c["row"] for c in ctx] == list(r["top_rows"])
        for c in ctx:
            row = c["row"]
            assert c["tok"] == tok.decode([int(ids[row])])
            lo = row - len(c["left"])
            assert len(c["left"]) <= CONTEXT and len(c["right"]) <= CONTEXT
            assert (seq[lo : row + len(c["right"]) + 1] == seq[row]).all()  # never across windows
            assert c["left"] == [tok.decode([int(i)]) for i in ids[lo:row]]
            checked += 1
    assert checked > 0


def test_logit_effects_by_hand(lm):
    model, tok, _ = load_model(str(lm["model"]))
    sae, _ = load_sae(lm["sa"])
    w_u = model.lm_head.weight.detach()
    g = model.model.norm.weight.detach()
    assert torch.equal(final_norm_scale(model), g)
    feats = lm["feats"][lm["feats"].run == lm["sa"].name].set_index(["latent", "sign"])
    for lat in (0, 5, 17):
        eff = (w_u @ (g * sae.W_dec[lat].detach())).numpy()
        order = np.argsort(-eff)
        plus, minus = feats.loc[(lat, "+")], feats.loc[(lat, "-")]
        np.testing.assert_allclose(plus["promoted_logit"], eff[order[:10]], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(plus["suppressed_logit"], eff[order[::-1][:10]], rtol=1e-4, atol=1e-6)
        assert list(plus["promoted"])[0] == tok.decode([int(order[0])])
        # the - sign is the mirror: it promotes what + suppresses
        assert list(minus["promoted"]) == list(plus["suppressed"])
        np.testing.assert_allclose(minus["promoted_logit"], -np.asarray(plus["suppressed_logit"]), rtol=1e-6)


def test_decoder_pairs_find_the_matching_directions(lm):
    pairs = pd.read_parquet(lm["site"] / "pairs.parquet")
    a, _ = load_sae(lm["sa"])
    b, _ = load_sae(lm["gated"])
    wa = torch.nn.functional.normalize(a.W_dec.detach(), dim=1)
    wb = torch.nn.functional.normalize(b.W_dec.detach(), dim=1)
    feats = lm["feats"][lm["feats"].run == lm["sa"].name]
    bipolar = sorted(feats[(feats.sign == "+") & (feats.minority_share >= 0.1)].latent)
    assert sorted(pairs.a_latent) == bipolar and len(bipolar) > 0
    gated = lm["feats"][lm["feats"].run == lm["gated"].name]
    live = set(gated[(gated.sign == "+") & (gated["count"] > 0)].latent)
    for _, r in pairs.iterrows():
        cos = (wb @ wa[int(r.a_latent)]).numpy()
        best_plus = max(live, key=lambda j: cos[j])
        best_minus = max(live, key=lambda j: -cos[j])
        assert r.cos_plus == pytest.approx(cos[best_plus], abs=1e-5)
        assert r.cos_minus == pytest.approx(-cos[best_minus], abs=1e-5)


def test_synthetic_store_gets_tables_and_a_note(tmp_path, capsys):
    run_inproc("harvest", "--source", "synthetic", "--d", 8, "--n-axes", 6, "--tokens", "8k", "--eval-tokens", "1k",
               "--out", tmp_path / "s", "--quiet", capsys=capsys)  # fmt: skip
    run_inproc("train", "--store", tmp_path / "s", "--out", tmp_path / "r", "--width", 6, "--tokens", "8k",
               "--batch", 500, "--quiet", capsys=capsys)  # fmt: skip
    p = run_inproc(
        "browse", *(tmp_path / "r").iterdir(), "--out", tmp_path / "site", "--quiet", capsys=capsys
    )
    assert p.returncode == 0, p.stderr
    manifest = _manifest(tmp_path / "site")
    assert "no tokens" in manifest["runs"][0]["note"]
    feats = pd.read_parquet(tmp_path / "site" / "features.parquet")
    assert feats.top_tokens.map(len).sum() == 0 and feats["count"].sum() > 0


# --- bad input -----------------------------------------------------------------------------------
def test_bad_input(lm, tmp_path, capsys):
    args = [lm["sa"], "--quiet"]
    one_line_error(run_inproc("browse", *args, "--out", tmp_path / "a", "--top", 0, capsys=capsys), "--top")
    one_line_error(run_inproc("browse", *args, "--out", tmp_path / "b", "--latents", "x-3", capsys=capsys),
                   "--latents")  # fmt: skip
    one_line_error(run_inproc("browse", *args, "--out", tmp_path / "b", "--latents", "999", capsys=capsys),
                   "--latents", "out of range")  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(run_inproc("browse", *args, "--out", other, capsys=capsys), "other files")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    one_line_error(run_inproc("browse", *args, "--out", lm["site"], capsys=capsys), "--force")
    # a store of another model/hookpoint
    run_inproc("harvest", "--source", "synthetic", "--d", 32, "--n-axes", 6, "--tokens", "2k", "--eval-tokens", "500",
               "--out", tmp_path / "syn", "--quiet", capsys=capsys)  # fmt: skip
    one_line_error(run_inproc("browse", *args, "--store", tmp_path / "syn", "--out", tmp_path / "c", capsys=capsys),
                   "--store")  # fmt: skip
    # an empty eval split
    run_inproc("harvest", "--source", "synthetic", "--d", 8, "--n-axes", 6, "--tokens", "2k", "--eval-tokens", "0",
               "--out", tmp_path / "noeval", "--quiet", capsys=capsys)  # fmt: skip
    run_inproc("train", "--store", tmp_path / "noeval", "--out", tmp_path / "r", "--width", 6, "--tokens", "2k",
               "--batch", 250, "--quiet", capsys=capsys)  # fmt: skip
    one_line_error(run_inproc("browse", *(tmp_path / "r").iterdir(), "--out", tmp_path / "d", capsys=capsys),
                   "no eval rows")  # fmt: skip
    # the run's store is gone
    run = shutil.copytree(lm["sa"], tmp_path / "moved-run")
    cfg = json.loads((run / "train_cfg.json").read_text())
    cfg["store"] = str(tmp_path / "gone")
    cfg.get("extra", {})["store"] = str(tmp_path / "gone")
    (run / "train_cfg.json").write_text(json.dumps(cfg))
    one_line_error(run_inproc("browse", run, "--out", tmp_path / "e", capsys=capsys), "gone")
    for name in "abcde":
        assert not (tmp_path / name).exists()  # nothing written half-way
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --- the site in a real browser -------------------------------------------------------------------
def _chromium() -> str | None:
    for name in (
        os.environ.get("SAGSAE_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if name and Path(name).exists():
            return name
    return None


def _load_js(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


def _manifest(site: Path) -> dict:
    return _load_js(site / "data" / "manifest.js")


def _site_latents(site: Path, rid: str) -> dict:
    out = {}
    for p in sorted((site / "data").glob(f"{rid}-[0-9]*.js")):
        out.update(_load_js(p)["latents"])
    return out


def test_site_in_headless_chromium(lm, tmp_path):
    chromium = _chromium()
    playwright = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("no chromium executable (apt-get install chromium; .ci/run installs it)")
    feats = lm["feats"]
    sa = feats[(feats.run == lm["sa"].name)]
    live = sorted(sa.groupby("latent")["count"].sum().loc[lambda s: s > 0].index)
    artifacts = Path(os.environ.get("SAGSAE_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(
            600_000
        )  # waits are for events; the bound only stops a hang, not a slow machine
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((lm["site"] / "index.html").as_uri())
        page.wait_for_selector("#index tbody tr")
        rows = page.locator("#index tbody tr")
        assert sorted(int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.latent)")) == live
        # sorting by bipolarity puts the most bipolar live latent first
        page.click("th[data-key=ms]")
        first = int(rows.first.get_attribute("data-latent"))
        plus = sa[sa.sign == "+"].set_index("latent")
        assert plus.loc[first, "minority_share"] == pytest.approx(plus.loc[live, "minority_share"].max())
        # search narrows the rows to latents whose tokens contain the query
        word = next(t for t in plus.loc[live[0], "top_tokens"] if t.strip())
        page.fill("#search", word.strip())
        shown = [int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.latent)")]
        assert 0 < len(shown) <= len(live) and live[0] in shown
        page.fill("#search", "")
        # a latent page shows both sign columns, the top context's firing token highlighted
        lat = int(sa[(sa.sign == "-") & (sa["count"] > 0)].sort_values("count").latent.iloc[-1])
        page.goto((lm["site"] / "index.html").as_uri() + f"#r0/{lat}")
        page.wait_for_selector(f"#latent[data-run='r0'][data-latent='{lat}']")
        assert page.locator("#latent .side[data-sign='+']").count() == 1
        assert page.locator("#latent .side[data-sign='-']").count() == 1
        top_minus = sa[(sa.sign == "-") & (sa.latent == lat)].top_tokens.iloc[0][0]
        shown_tok = page.locator("#latent .side[data-sign='-'] mark.fire").first.inner_text()
        assert shown_tok.strip() == top_minus.replace("\n", "↵").strip()
        page.screenshot(path=str(artifacts / "browse-latent.png"))
        # a one-signed architecture shows one column
        page.goto((lm["site"] / "index.html").as_uri() + "#r1/0")
        page.wait_for_selector("#latent[data-run='r1'][data-latent='0']")
        assert page.locator("#latent .side").count() == 1
        # the decoder pairs view links A's bipolar latents to B's
        page.goto((lm["site"] / "index.html").as_uri() + "#pairs")
        page.wait_for_selector("#pairs tbody tr")
        assert page.locator("#pairs tbody tr").count() == len(pd.read_parquet(lm["site"] / "pairs.parquet"))
        browser.close()
    assert not errors, errors
    assert all(u.startswith("file://") for u in requests), [
        u for u in requests if not u.startswith("file://")
    ]
    assert (artifacts / "browse-latent.png").stat().st_size > 10_000
