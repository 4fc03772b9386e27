"""Evaluate trained runs on their store's held-out ``eval`` split (PAPER.md §6 metrics).

One Parquet part file per run under ``<results>/eval/``, so concurrent evaluations never write the
same file; ``read_table`` concatenates them. A run already evaluated with the same settings is
skipped unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch

from sagsae_cli.errors import SagsaeError
from sagsae_cli.metrics import R2, Census, axis_recovery, census_summary, latents_per_axis
from sagsae_cli.progress import progress_bar
from sagsae_cli.reader import sequential_batches
from sagsae_cli.sae import load_sae
from sagsae_cli.sae.base import atomic_write
from sagsae_cli.store import open_store


def evaluate_run(run_dir: Path, eval_tokens: int, batch: int = 4096, bipolar_threshold: float = 0.1, lm=None):
    """(summary row, per-latent census table) of one run on its store's eval split."""
    train_cfg = json.loads((run_dir / "train_cfg.json").read_text())
    store = run_store(run_dir)
    store_path = store.path
    sae, _ = load_sae(run_dir)
    if store.d != sae.cfg.d_in:
        raise SagsaeError(f"{run_dir} has d_in={sae.cfg.d_in} but its store {store_path} has d={store.d}")
    n = min(eval_tokens, store.rows("eval"))
    if n == 0:
        raise SagsaeError(f"store {store_path} has no eval rows: harvest with --eval-tokens > 0")
    r2, active, live, sse = R2(), 0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 0.0
    census = Census(sae.cfg.d_sae)
    with torch.no_grad():
        for x in sequential_batches(store, "eval", batch, max_rows=n):
            f = sae.encode(x)
            x_hat = sae.decode(f)
            r2.update(x, x_hat)
            sse += float((x - x_hat).pow(2).sum())
            nz = f != 0
            active += int(nz.sum())
            live |= nz.any(0)
            census.update(f)
    row = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "variant": sae.cfg.variant,
        "width": sae.cfg.d_sae,
        # the requested coefficient: seeds of one target-L0 sweep share it (and their target), so they
        # pool into one point; the coefficient the controller ended with is l1_final
        "l1": float(train_cfg.get("l1", sae.cfg.l1)),
        "l1_final": sae.cfg.l1,
        "target_l0": float(train_cfg.get("target_l0", 0.0)),
        "k": sae.cfg.k,
        "seed": train_cfg["seed"],
        "model": store.meta.get("model", ""),
        "hook": store.meta.get("hook", ""),
        "eval_tokens": n,
        "r2": r2.value(),
        "mse": sse / n,
        "l0": active / n,
        "dead_frac": 1.0 - float(live.float().mean()),
        "params": sae.param_count(),
        "bipolar_threshold": bipolar_threshold,
    }
    census_table = census.table()
    row.update(census_summary(census_table, bipolar_threshold))
    truth = store.truth()
    if truth is not None:
        axes = torch.from_numpy(truth["axes"])
        row["axis_recovery"] = axis_recovery(sae.W_dec.detach(), axes, live)
        row["latents_per_axis"] = latents_per_axis(sae.W_dec.detach(), axes, live)
    if lm is not None:
        row.update(_loss_recovered(run_dir, store, *lm))
    census_table.insert(0, "run", run_dir.name)
    census_table.insert(1, "hook", row["hook"])
    return row, census_table


def _loss_recovered(run_dir: Path, store, model, tokenizer, max_windows: int) -> dict:
    from sagsae_cli.splice import eval_windows, loss_recovered

    ids = eval_windows(store, tokenizer, max_windows)
    if ids is None:
        return {}
    raw_sae, _ = load_sae(run_dir, normalised=False)  # folded weights act on raw activations
    with torch.no_grad():
        out = loss_recovered(model, ids, store.meta["hook"], int(store.meta["layer"]),
                             lambda x: raw_sae.decode(raw_sae.encode(x)))  # fmt: skip
    return {**out, "lr_windows": int(ids.shape[0])}


def evaluate(
    run_dirs: list[str], results: str | Path, eval_tokens: int = 100_000, force: bool = False,
    bipolar_threshold: float = 0.1, lr_windows: int = 16, model: str | None = None, quiet: bool = False,
):  # fmt: skip
    """Evaluate every finished run; returns the rows (new and skipped) as a DataFrame."""
    dirs = [Path(d) for d in run_dirs if (Path(d) / "train_cfg.json").exists()]
    if not dirs:
        raise SagsaeError("no run directories matched (each holds train_cfg.json): check the paths")
    out, census_dir = Path(results) / "eval", Path(results) / "census"
    out.mkdir(parents=True, exist_ok=True)
    census_dir.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        if not (d / "sae_weights.safetensors").exists():
            raise SagsaeError(f"{d} has not finished training: rerun its `sagsae train` command first")
    rows, lms = [], {}
    with progress_bar("eval", total=len(dirs), unit="run", quiet=quiet) as bar:
        for d in dirs:
            bar.note(f"{d.parent.name}/{d.name}")
            part = out / part_name(d)
            key = cache_key(d, eval_tokens=min(eval_tokens, _eval_rows(d)), bipolar_threshold=bipolar_threshold,
                            lr_windows=lr_windows, model=model)  # fmt: skip
            if part.exists() and not force:
                old = _read_part(part)
                if old is not None and "cache_key" in old and old["cache_key"].iloc[0] == key:
                    rows.append(old.iloc[0].to_dict())
                    bar.advance(1)
                    continue
            row, census = evaluate_run(d, eval_tokens, bipolar_threshold=bipolar_threshold,
                                       lm=_lm_for(d, lr_windows, model, lms))  # fmt: skip
            row["cache_key"] = key
            atomic_write(census_dir / part.name, lambda p, c=census: c.to_parquet(p, index=False))
            frame = pd.DataFrame([row])
            atomic_write(part, lambda p, frame=frame: frame.to_parquet(p, index=False))
            rows.append(row)
            bar.advance(1)
    return pd.DataFrame(rows)


def cache_key(run_dir: Path, **settings) -> str:
    """What a cached row depends on: the evaluation settings and the SAE's weights (a run retrained
    with --force gets a new row)."""
    h = hashlib.sha256()
    with open(run_dir / "sae_weights.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return json.dumps({**settings, "weights": h.hexdigest()[:16]}, sort_keys=True)


def _read_part(path: Path):
    """A cached part file, or None if it is unreadable (it is then recomputed and replaced)."""
    try:
        return pd.read_parquet(path)
    except Exception:
        return None


def part_name(run_dir: Path) -> str:
    """Part file of a run: its name plus a hash of its full path, so runs with the same id in different
    directories (one per hookpoint, say) never overwrite each other."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return f"{run_dir.name}-{digest}.parquet"


def run_store(run_dir: Path):
    """The store a run was trained on (recorded in train_cfg.json)."""
    cfg = json.loads((run_dir / "train_cfg.json").read_text())
    path = Path(cfg.get("extra", {}).get("store") or cfg["store"])
    if not path.exists():
        raise SagsaeError(
            f"the store of {run_dir} is gone from {path}: move it back (or symlink it there) to evaluate this run"
        )
    return open_store(path)


def _eval_rows(run_dir: Path) -> int:
    return run_store(run_dir).rows("eval")


def read_table(results: str | Path, table: str = "eval") -> pd.DataFrame:
    parts = sorted((Path(results) / table).glob("*.parquet"))
    if not parts:
        raise SagsaeError(f"table {table!r} in {results} is empty: run `sagsae {table}` first")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _lm_for(run_dir: Path, lr_windows: int, override: str | None, cache: dict):
    """(model, tokenizer, windows) for loss recovered, or None (synthetic store, or disabled)."""
    if lr_windows <= 0:
        return None
    store = run_store(run_dir)
    if store.meta.get("source") != "lm":
        return None
    name = override or store.meta.get("model_source") or store.meta["model"]
    if name not in cache:
        from sagsae_cli.models import load_model

        model, tok, _ = load_model(name, store.meta.get("revision"))
        cache[name] = (model, tok)
    return (*cache[name], lr_windows)
