"""`sagsae pairs`: the opposed pairs of one SAE (ours or one made elsewhere) on a store's held-out rows.

A one-signed SAE spends two latents on a direction whose feature carries both signs ("pressure too high" /
"too low"): their decoder rows point nearly opposite ways (cosine <= -tau) and they rarely fire on the
same token. Per candidate pair (cosine <= -tau): both latents, the cosine, each one's firing frequency
and the co-firing rate (``metrics.pairs_table``); a pair is ``opposed`` when both latents are live and
co-fire on at most ``max_cofire`` of the rarer one's firings. The summary (count, share of live latents)
is also a column of every eval row (``evaluate.measure``); an SA-GSAE holds both signs in one latent
instead, which its bipolar census counts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.evaluate import check_pairing, eval_rows_for, foreign_forward, measure, run_store
from sagsae_cli.files import atomic_write
from sagsae_cli.foreign import detect, load_foreign
from sagsae_cli.metrics import census_summary, opposed_summary
from sagsae_cli.sae import load_sae
from sagsae_cli.store import open_store


def pairs(path: str | Path, store: str | None = None, tau: float = 0.9, max_cofire: float = 0.05,
          eval_tokens: int = 100_000, allow_mismatch: bool = False, device="cpu") -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """(pairs table, summary) of the SAE at ``path`` on ``store`` (a sagsae run: its own store by default)."""
    from sagsae_cli.distributed import pick_device

    require(0 < tau <= 1, f"--cos is tau in (0, 1] (got {tau:g})")
    require(0 <= max_cofire <= 1, f"--max-cofire is a share in [0, 1] (got {max_cofire:g})")
    path, device = Path(path), pick_device(device)
    source = detect(path)
    if source == "sagsae":
        st = open_store(store) if store else run_store(path)
        sae, _ = load_sae(path)
        sae.to(device)
        w_dec, n = sae.W_dec.detach(), eval_rows_for(path, sae, st, eval_tokens)

        def forward(x):
            out = sae(x)
            return out.f, out.x_hat, {}
    else:
        if store is None:
            raise SagsaeError(
                f"{path} was made by {source}, not sagsae: give the store of its hookpoint with --store"
            )
        st = open_store(store)
        fs = load_foreign(path).to(device)
        n = eval_rows_for(path, fs, st, eval_tokens)
        check_pairing(fs, st, allow_mismatch)
        w_dec, forward = fs.W_dec, foreign_forward(fs, st)
    _, census, live, table = measure(forward, w_dec, st, n, device, tau=tau)
    live = int(live.sum())
    table["opposed"] = (table.freq_i > 0) & (table.freq_j > 0) & (table.cofire <= max_cofire)
    summary = {"source": source, "width": int(w_dec.shape[0]), "live": live, "tokens": n, "candidates": len(table),
               **opposed_summary(table, live, max_cofire), "bipolar_frac": census_summary(census)["bipolar_frac"]}  # fmt: skip
    return table, summary


def write(table: pd.DataFrame, out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise SagsaeError(f"{out} exists: add --force to replace it, or choose another --out")
    if out.suffix != ".parquet":
        raise SagsaeError(f"--out {out}: pairs are saved as a .parquet file")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: table.to_parquet(p, index=False))
    return out
