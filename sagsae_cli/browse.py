"""`sagsae browse`: per-latent, per-sign statistics of trained runs and a static site to look at them.

One streaming pass over a run's held-out tokens collects, for every latent and each sign, the firing
count, mass and maximum (``metrics.Census``), a histogram of |activation| on fixed log bins, and the
top-K activating rows (a bounded top-K merge per batch: memory is O(batch x latents), never
tokens x latents). Contexts (±``CONTEXT`` tokens of the same window) come from the store's index
arrays; logit effects are W_U (g ⊙ w_dec) through the model's final norm scale g, as Neuronpedia
shows them: the top promoted and suppressed tokens, mirrored for the - sign of a signed latent.
The site (``sagsae_cli/site/``) is plain HTML + CSS + JS reading ``data/*.js`` files through script
tags, so it opens from the file system with no server and no network.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.evaluate import PAIR_COFIRE, PAIR_COS, check_pairing, eval_rows_for, run_store
from sagsae_cli.files import SAE_CFG, read_json, train_cfg
from sagsae_cli.metrics import Census, cofiring, opposed_pairs, pairs_table
from sagsae_cli.models import store_model
from sagsae_cli.progress import progress_bar
from sagsae_cli.sae import load_sae
from sagsae_cli.store import open_store

CONTEXT = 10  # tokens either side of a firing token
HIST_EDGES = np.logspace(-4, 2, 61)  # |activation| bin edges, 10 per decade (store-normalised units)
LOGIT_TOP = 10
SIGNS = {"+": 1.0, "-": -1.0}


@dataclass
class RunStats:
    """What one pass over a run's eval tokens collected (numpy, latent-major)."""

    name: str
    meta: dict
    n_tokens: int
    census: pd.DataFrame  # latent, n_pos, n_neg, mass_pos, mass_neg, minority_share
    top_acts: dict  # sign -> (H, K) activations (0 where fewer than K rows fired)
    top_rows: dict  # sign -> (H, K) eval-row indices
    hist: dict  # sign -> (H, bins) counts of |a| per HIST_EDGES bin
    w_dec: np.ndarray  # (H, d) decoder directions
    contexts: dict = field(default_factory=dict)  # (sign, latent) -> list of context dicts
    logits: dict = field(default_factory=dict)  # latent -> (promoted [(tok, v)], suppressed [(tok, v)])
    opposed: list = field(default_factory=list)  # opposed pairs (metrics.pairs_table rows that qualify)


def _topk_merge(vals: torch.Tensor, rows: torch.Tensor, batch: torch.Tensor, offset: int, k: int):
    """Merge a batch's (H, B) scores into the running (H, K) top-K (values, row ids)."""
    bk = min(k, batch.shape[1])
    bv, bi = batch.topk(bk, dim=1)
    allv = torch.cat([vals, bv], dim=1)
    alli = torch.cat([rows, bi + offset], dim=1)
    top, idx = allv.topk(k, dim=1)
    return top, alli.gather(1, idx)


def collect(run_dir: Path, store, n_tokens: int, top_k: int, batch: int = 4096, device="cpu",
            quiet: bool = False, allow_mismatch: bool = False) -> RunStats:  # fmt: skip
    """One streaming pass over a run's (or an SAE made elsewhere's) eval tokens (``stream_stats``), with
    its metadata and its opposed pairs."""
    from sagsae_cli.foreign import detect, load_foreign, normalised_view

    if detect(run_dir) == "sagsae":
        sae, _ = load_sae(run_dir)
        meta = _run_meta(run_dir, store, sae)
    else:
        fs = load_foreign(run_dir)
        check_pairing(fs, store, allow_mismatch)
        sae = normalised_view(fs, store.norm_factor)
        meta = {**_store_meta(store), "run": run_dir.name, "run_dir": str(run_dir), "variant": fs.name,
                "width": fs.d_sae, "l1": None, "seed": None}  # fmt: skip
    n = eval_rows_for(run_dir, sae, store, n_tokens,
                      "it was harvested from another model or hookpoint; give the run's own store with --store")  # fmt: skip
    pairs = opposed_pairs(sae.W_dec.detach(), PAIR_COS)
    census, top, hist, fires, both = stream_stats(
        sae, store, n, top_k, batch, device, label=f"browse {run_dir.name}", quiet=quiet, pairs=pairs
    )
    table = pairs_table(pairs, fires.cpu(), both.cpu(), n)
    opposed = table[(table.freq_i > 0) & (table.freq_j > 0) & (table.cofire <= PAIR_COFIRE)]
    return RunStats(
        opposed=opposed.to_dict("records"),
        name=run_dir.name,
        meta=meta,
        n_tokens=n,
        census=census.table(),
        top_acts={s: top[s][0].cpu().numpy() for s in SIGNS},
        top_rows={s: top[s][1].cpu().numpy() for s in SIGNS},
        hist={s: hist[s].cpu().numpy().astype(np.int64) for s in SIGNS},
        w_dec=sae.W_dec.detach().cpu().float().numpy(),
    )


def stream_stats(sae, store, n: int, top_k: int, batch: int = 4096, device="cpu", label="browse", quiet=True,
                 pairs=None):  # fmt: skip
    """Census, |a| histograms (H, bins) and top-K (values, rows) as (H, K) per sign, from the first ``n``
    eval rows in batches: memory O(batch x H + K x H), whatever ``n``; with ``pairs`` (candidate opposed
    pairs, ``metrics.opposed_pairs``) also the firing counts per latent and co-firing counts per pair."""
    sae.to(device)
    h, edges = sae.cfg.d_sae, torch.tensor(HIST_EDGES, dtype=torch.float32, device=device)
    bins = len(HIST_EDGES) + 1
    census = Census(h, device=device)
    count = {"+": census.n_pos, "-": census.n_neg}
    mass = {"+": census.mass_pos, "-": census.mass_neg}
    top = {s: (torch.zeros(h, top_k, device=device), torch.zeros(h, top_k, dtype=torch.long, device=device))
           for s in SIGNS}  # fmt: skip
    hist = {s: torch.zeros(h * bins, device=device) for s in SIGNS}
    fires = torch.zeros(h, dtype=torch.long, device=device)
    both = torch.zeros(0 if pairs is None else len(pairs), dtype=torch.long, device=device)
    with torch.no_grad(), progress_bar(label, total=n, quiet=quiet) as bar:
        for start in range(0, n, batch):
            x = store.read("eval", start, min(start + batch, n), normalise=True).to(device)
            f = sae.encode(x)
            if pairs is not None:
                per_latent, per_pair = cofiring(f, pairs)
                fires += per_latent
                both += per_pair
            f_t = f.T.contiguous()  # (H, B): per-latent rows for the top-K and the sums
            for s, sign in SIGNS.items():
                v = (f_t * sign).clamp_min_(0)
                top[s] = _topk_merge(*top[s], v, start, top_k)
                fired = v > 0
                count[s] += fired.sum(1)
                mass[s] += v.sum(1, dtype=torch.float64)
                lat, a = fired.nonzero(as_tuple=True)[0], v[fired]  # both in row-major order
                hist[s].index_add_(0, lat * bins + torch.bucketize(a, edges), torch.ones_like(a))
            bar.advance(x.shape[0])
    return census, top, {s: hist[s].view(h, bins) for s in SIGNS}, fires, both


def _run_meta(run_dir: Path, store, sae) -> dict:
    cfg = train_cfg(run_dir)
    return {"run": run_dir.name, "run_dir": str(run_dir), "variant": sae.cfg.variant or sae.cfg.architecture,
            "width": sae.cfg.d_sae, "l1": cfg.get("l1"), "seed": cfg.get("seed"), **_store_meta(store)}  # fmt: skip


def _store_meta(store) -> dict:
    return {"model": store.meta.get("model", ""), "hook": store.meta.get("hook_name") or store.meta.get("hook", ""),
            "source": store.meta.get("source", ""), "store": str(store.path)}  # fmt: skip


def add_contexts(stats: RunStats, store, tokenizer) -> None:
    """Fill ``stats.contexts`` with the ±CONTEXT tokens around every top row (same window only)."""
    ids = store.read_index("eval", "token_ids", 0, stats.n_tokens)
    seq = store.read_index("eval", "sequence_ids", 0, stats.n_tokens)
    if len(ids) == 0 or ids.max() < 0:
        return  # synthetic store: no tokens
    decode = _decoder(tokenizer)
    for s in SIGNS:
        acts, rows = stats.top_acts[s], stats.top_rows[s]
        for lat in range(acts.shape[0]):
            out = []
            for a, r in zip(acts[lat], rows[lat]):
                if a <= 0:
                    break
                lo, hi = max(0, r - CONTEXT), min(len(ids), r + CONTEXT + 1)
                same = seq[lo:hi] == seq[r]
                left = [decode(t) for t, ok in zip(ids[lo:r], same[: r - lo]) if ok]
                right = [decode(t) for t, ok in zip(ids[r + 1 : hi], same[r - lo + 1 :]) if ok]
                out.append(
                    {"row": int(r), "act": float(a), "left": left, "tok": decode(ids[r]), "right": right}
                )
            stats.contexts[(s, lat)] = out


def _decoder(tokenizer):
    cache: dict[int, str] = {}

    def decode(i) -> str:
        i = int(i)
        if i not in cache:
            cache[i] = tokenizer.decode([i]) if tokenizer is not None else str(i)
        return cache[i]

    return decode


def final_norm_scale(model) -> torch.Tensor:
    """The final norm's per-dimension scale g (ones when the model has none; 1 + w for Gemma)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)
    for name in ("norm", "final_layer_norm", "ln_f", "final_layernorm"):
        mod = getattr(base, name, None)
        if mod is not None and getattr(mod, "weight", None) is not None:
            w = mod.weight.detach().float()
            return w + 1.0 if "Gemma" in type(mod).__name__ else w
    return torch.ones(model.config.hidden_size)


def logit_effects(w_dec: np.ndarray, unembed: torch.Tensor, scale: torch.Tensor, top: int = LOGIT_TOP):
    """Per latent: (ids, values) of the ``top`` most promoted and most suppressed tokens of
    W_U (g ⊙ w_dec_i), in chunks of latents (the + direction; the - sign is its mirror)."""
    w = torch.from_numpy(w_dec).float() * scale.float()
    up_i, up_v, down_i, down_v = [], [], [], []
    for start in range(0, w.shape[0], 256):
        eff = w[start : start + 256] @ unembed.float().T  # (chunk, vocab)
        v, i = eff.topk(top, dim=1)
        up_i.append(i), up_v.append(v)
        v, i = (-eff).topk(top, dim=1)
        down_i.append(i), down_v.append(-v)
    return (
        torch.cat(up_i).numpy(),
        torch.cat(up_v).numpy(),
        torch.cat(down_i).numpy(),
        torch.cat(down_v).numpy(),
    )


def add_logits(stats: RunStats, model, tokenizer) -> None:
    unembed = model.get_output_embeddings().weight.detach()
    if unembed.shape[1] != stats.w_dec.shape[1]:
        raise SagsaeError(
            f"the model's unembedding has width {unembed.shape[1]} but the SAE's {stats.w_dec.shape[1]}: "
            "the store was harvested from another model"
        )
    up_i, up_v, down_i, down_v = logit_effects(stats.w_dec, unembed, final_norm_scale(model))
    decode = _decoder(tokenizer)
    for lat in range(stats.w_dec.shape[0]):
        stats.logits[lat] = (
            [(decode(i), float(v)) for i, v in zip(up_i[lat], up_v[lat])],
            [(decode(i), float(v)) for i, v in zip(down_i[lat], down_v[lat])],
        )


def features_table(stats: RunStats) -> pd.DataFrame:
    """One row per (latent, sign): the table `features.parquet` holds (docs/FORMATS.md)."""
    c = stats.census
    rows = []
    for s, sign in SIGNS.items():
        n = c.n_pos if s == "+" else c.n_neg
        mass = c.mass_pos if s == "+" else c.mass_neg
        for lat in range(len(c)):
            acts = stats.top_acts[s][lat]
            keep = acts > 0
            ctx = stats.contexts.get((s, lat), [])
            up, down = stats.logits.get(lat, ([], []))
            if sign < 0:  # the - sign writes -w_dec: what + promotes, - suppresses
                up, down = down, up
            rows.append({
                "run": stats.name, "latent": lat, "sign": s, "count": int(n[lat]),
                "freq": float(n[lat]) / stats.n_tokens, "mean_abs": float(mass[lat]) / max(int(n[lat]), 1),
                "max_abs": float(acts[0]) if keep.any() else 0.0, "minority_share": float(c.minority_share[lat]),
                "top_acts": acts[keep].tolist(), "top_rows": stats.top_rows[s][lat][keep].tolist(),
                "top_tokens": [x["tok"] for x in ctx],
                "promoted": [t for t, _ in up], "promoted_logit": [sign * v for _, v in up],
                "suppressed": [t for t, _ in down], "suppressed_logit": [sign * v for _, v in down],
                "hist": stats.hist[s][lat].tolist(),
            })  # fmt: skip
    return pd.DataFrame(rows)


def decoder_pairs(a: RunStats, b: RunStats, bipolar_threshold: float = 0.1) -> pd.DataFrame:
    """For each bipolar latent of A: the latents of B whose decoder directions best match +w and -w
    (cosine), the pair a one-signed SAE needs for what one signed latent does."""
    wa = torch.nn.functional.normalize(torch.from_numpy(a.w_dec), dim=1)
    wb = torch.nn.functional.normalize(torch.from_numpy(b.w_dec), dim=1)
    live_b = torch.tensor(((b.census.n_pos + b.census.n_neg) > 0).to_numpy())
    cos = wa @ wb.T
    cos[:, ~live_b] = float("nan")
    bip = a.census.index[(a.census.minority_share >= bipolar_threshold).to_numpy()].to_numpy()
    rows = []
    for lat in bip:
        plus, minus = torch.nan_to_num(cos[lat], nan=-2.0), torch.nan_to_num(-cos[lat], nan=-2.0)
        bp, bm = int(plus.argmax()), int(minus.argmax())
        rows.append({"a_latent": int(lat), "minority_share": float(a.census.minority_share[lat]),
                     "b_plus": bp, "cos_plus": float(plus[bp]), "b_minus": bm, "cos_minus": float(minus[bm])})  # fmt: skip
    return pd.DataFrame(
        rows, columns=["a_latent", "minority_share", "b_plus", "cos_plus", "b_minus", "cos_minus"]
    )


def browse(run_dirs: list[str], out: str | Path, *, store: str | None = None, tokens: int | None = None,
           top_k: int = 10, compare: bool = False, force: bool = False, device: str = "cpu",
           quiet: bool = False, latents: list[int] | None = None, allow_mismatch: bool = False) -> Path:  # fmt: skip
    """Build the site (and features.parquet, pairs.parquet with ``compare``) into ``out``, atomically."""
    require(1 <= top_k <= 1000, f"--top must lie between 1 and 1000 (got {top_k})")
    out = Path(out)
    from sagsae_cli.foreign import detect, load_foreign

    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        source = detect(d)
        if source != "sagsae" and store is None:
            raise SagsaeError(
                f"{d} was made by {source}, not sagsae: give the store of its hookpoint with --store"
            )
        if source == "sagsae" and not (d / SAE_CFG).exists():
            raise SagsaeError(f"{d} has not finished training: rerun its `sagsae train` command first")
    if compare and len(dirs) != 2:
        raise SagsaeError(f"--compare takes exactly two runs, A (signed) and B (got {len(dirs)})")
    if compare:
        ds = [read_json(d / SAE_CFG, "retrain the run").get("d_in") if detect(d) == "sagsae" else load_foreign(d).d_in
              for d in dirs]  # fmt: skip
        if ds[0] != ds[1]:
            raise SagsaeError(
                f"--compare needs two SAEs of one activation space: {dirs[0].name} has d = {ds[0]}, {dirs[1].name} "
                f"d = {ds[1]}; compare runs trained on the same hookpoint (or browse them without --compare)"
            )
    from sagsae_cli.browse_site import SITE_MARK, _check_out, write_site

    _check_out(out, force)
    lms: dict = {}
    runs = []
    for d in dirs:
        st = open_store(store) if store else run_store(d)
        if detect(d) == "sagsae":
            _check_store(d, st)
        n = st.rows("eval") if tokens is None else tokens
        stats = collect(d, st, n, top_k, device=device, quiet=quiet, allow_mismatch=allow_mismatch)
        if st.meta.get("source") == "lm":
            model, tok = store_model(st, lms)
            add_contexts(stats, st, tok)
            add_logits(stats, model, tok)
        feats = features_table(stats)
        if latents is not None:
            outside = [i for i in latents if i >= stats.w_dec.shape[0]]
            if outside:
                raise SagsaeError(
                    f"--latents {outside[0]} is out of range: {d.name} has {stats.w_dec.shape[0]} latents"
                )
            feats = feats[feats.latent.isin(latents)].reset_index(drop=True)
        runs.append((stats, feats))
    pairs = decoder_pairs(runs[0][0], runs[1][0]) if compare else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_site(tmp, runs, pairs, ("r0", "r1"))
        pd.concat([f for _, f in runs], ignore_index=True).to_parquet(tmp / "features.parquet", index=False)
        if pairs is not None:
            pairs.to_parquet(tmp / "pairs.parquet", index=False)
        (tmp / SITE_MARK).write_text(json.dumps({"runs": [str(d) for d in dirs], "top": top_k}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


def _check_store(run_dir: Path, store) -> None:
    """Refuse a store from another model or hookpoint than the run was trained on."""
    cfg = read_json(run_dir / SAE_CFG, "retrain the run with `sagsae train ... --force`")
    for key, have in (("model_name", store.meta.get("model")), ("hook_name", store.meta.get("hook_name"))):
        want = cfg.get(key)
        if want and have and want != have:
            raise SagsaeError(
                f"{run_dir.name} was trained on {key.split('_')[0]} {want} but the store {store.path} holds {have}: "
                "give the run's own store with --store"
            )
