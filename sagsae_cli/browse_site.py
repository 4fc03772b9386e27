"""The feature browser's static site (docs/FORMATS.md, "browse"): the viewer's assets from ``site/``, a
manifest, and the data of every latent as ``data/*.js`` script files (so the site works from
``file://``, with no server), built aside and moved into ``--out``, which it only replaces when a
site is already there (``SITE_MARK``) and ``--force`` says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from sagsae_cli.browse import CONTEXT, HIST_EDGES, RunStats
from sagsae_cli.errors import SagsaeError

CHUNK = 64  # latents per site data file


SITE_MARK = "sagsae-browse.json"


SITE_ASSETS = Path(__file__).parent / "site"


# --- the site ----------------------------------------------------------------------------------
def _js(path: Path, call: str, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    path.write_text(f"{call}({text});\n", encoding="utf-8")


def _index_rows(features: pd.DataFrame) -> list[dict]:
    rows = []
    for lat, g in features.groupby("latent", sort=True):
        p, m = g[g.sign == "+"].iloc[0], g[g.sign == "-"].iloc[0]
        logit = max([abs(v) for v in [*p["promoted_logit"], *p["suppressed_logit"]]], default=0.0)
        rows.append({"i": int(lat), "fp": float(p["freq"]), "fm": float(m["freq"]), "ms": float(p["minority_share"]),
                     "mx": float(max(p["max_abs"], m["max_abs"])), "lg": float(logit),
                     "tp": list(p["top_tokens"][:3]), "tm": list(m["top_tokens"][:3]),
                     "up": list(p["promoted"][:3]), "dn": list(p["suppressed"][:3])})  # fmt: skip
    return rows


def write_site(
    tmp: Path, runs: list[tuple[RunStats, pd.DataFrame]], pairs: pd.DataFrame | None, pair_runs
) -> None:
    for asset in ("index.html", "app.js", "style.css"):
        shutil.copyfile(SITE_ASSETS / asset, tmp / asset)
    manifest = {"hist_edges": HIST_EDGES.tolist(), "context": CONTEXT, "chunk": CHUNK, "runs": []}
    for k, (stats, feats) in enumerate(runs):
        rid = f"r{k}"
        note = "" if stats.contexts else (
            "This store holds no tokens (synthetic data), so there are no contexts or logit effects: "
            "the table and histograms only."
        )  # fmt: skip
        opposed = [{"i": int(p["i"]), "j": int(p["j"]), "cos": float(p["cos"]), "cofire": float(p["cofire"]),
                    "freq_i": float(p["freq_i"]), "freq_j": float(p["freq_j"])} for p in stats.opposed]  # fmt: skip
        manifest["runs"].append({"id": rid, **stats.meta, "tokens": stats.n_tokens, "note": note,
                                 "latents": int(stats.w_dec.shape[0]), "opposed": opposed})  # fmt: skip
        _js(tmp / "data" / f"{rid}-index.js", "SAGSAE.index", {"run": rid, "rows": _index_rows(feats)})
        for start in range(0, stats.w_dec.shape[0], CHUNK):
            part = feats[(feats.latent >= start) & (feats.latent < start + CHUNK)]
            payload = {}
            for (lat, s), g in part.groupby(["latent", "sign"]):
                r = g.iloc[0]
                payload.setdefault(str(lat), {})[s] = {
                    "count": int(r["count"]), "freq": float(r["freq"]), "mean": float(r["mean_abs"]),
                    "max": float(r["max_abs"]), "hist": [int(v) for v in r["hist"]],
                    "ctx": stats.contexts.get((s, lat), []),
                    "up": [[t, float(v)] for t, v in zip(r["promoted"], r["promoted_logit"])],
                    "dn": [[t, float(v)] for t, v in zip(r["suppressed"], r["suppressed_logit"])],
                }  # fmt: skip
            _js(tmp / "data" / f"{rid}-{start // CHUNK}.js", "SAGSAE.chunk", {"run": rid, "chunk": start // CHUNK,
                                                                            "latents": payload})  # fmt: skip
    if pairs is not None:
        manifest["pairs"] = {"a": pair_runs[0], "b": pair_runs[1], "rows": pairs.to_dict("records")}
    _js(tmp / "data" / "manifest.js", "SAGSAE.manifest", manifest)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SagsaeError(f"--out {out} is a file: choose a directory for the site")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SITE_MARK).exists():
            raise SagsaeError(
                f"--out {out} holds other files (not a sagsae browse site): choose an empty or new directory"
            )
        if not force:
            raise SagsaeError(f"--out {out} already holds a site: add --force to replace it")
