"""Evaluate trained runs on their store's held-out ``eval`` split (docs/METHOD.md §6 metrics).

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

from sagsae_cli.distributed import pick_device
from sagsae_cli.errors import SagsaeError
from sagsae_cli.faults import fault_point
from sagsae_cli.files import REEVAL, SAE_WEIGHTS, TRAIN_CFG, atomic_write, read_parquet
from sagsae_cli.files import train_cfg as read_train_cfg
from sagsae_cli.location import Location
from sagsae_cli.metrics import R2, Census, axis_recovery, census_summary, fired, latents_per_axis
from sagsae_cli.progress import progress_bar
from sagsae_cli.reader import sequential_batches
from sagsae_cli.sae import load_sae
from sagsae_cli.store import open_store
from sagsae_cli.train import snapshot_dirs, snapshot_tokens


def evaluate_run(
    run_dir: Path, eval_tokens: int, batch: int = 4096, bipolar_threshold: float = 0.1, lm=None,
    weights: Path | None = None, device: str | torch.device = "cpu",
):  # fmt: skip
    """(summary row, per-latent census table) of one run on its store's eval split; ``weights``: a
    snapshot directory of the run to evaluate instead of its final SAE. The SAE and the metric sums run
    on ``device``; loss recovered runs the model on the CPU."""
    train_cfg = read_train_cfg(run_dir)
    store = run_store(run_dir)
    sae, _ = load_sae(weights or run_dir)
    steps = -(-int(train_cfg["tokens"]) // int(train_cfg["batch"]))
    n = eval_rows_for(run_dir, sae, store, eval_tokens)
    store.check_chunks()
    sae.to(device)
    r2, active, live = R2(), 0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    census = Census(sae.cfg.d_sae, device=device)
    terms: dict[str, float] = {}  # the training loss's terms, summed over tokens
    with torch.no_grad():
        for x in sequential_batches(store, "eval", batch, max_rows=n):
            x = x.to(device)
            out = sae(x)  # the SAE's encode/decode plus its loss terms at its own coefficient
            f, x_hat = out.f, out.x_hat
            for name, value in out.losses.items():
                terms[name] = terms.get(name, 0.0) + float(value) * x.shape[0]
            r2.update(x, x_hat)  # also the squared error, summed in float64
            nz = f != 0
            active += int(nz.sum())
            live |= fired(f)
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
        "tokens": snapshot_tokens(weights) if weights else steps * int(train_cfg["batch"]),
        "final": weights is None,
        "r2": r2.value(),
        "mse": r2.sse / n,
        "l0": active / n,
        "dead_frac": 1.0 - float(live.float().mean()),
        # the held-out training objective at the SAE's coefficient (cfg.json's l1: for target-L0 runs
        # the one it had then), and its terms: what `compare` reads tokens_to_objective from
        "objective": sum(terms.values()) / n,
        **{f"objective_{name}": value / n for name, value in terms.items()},
        "params": sae.param_count(),
        "bipolar_threshold": bipolar_threshold,
    }
    census_table = census.table()
    row.update(census_summary(census_table, bipolar_threshold))
    truth = store.truth()
    if truth is not None:
        axes, w_dec, live = torch.from_numpy(truth["axes"]), sae.W_dec.detach().cpu(), live.cpu()
        row["axis_recovery"] = axis_recovery(w_dec, axes, live)
        row["latents_per_axis"] = latents_per_axis(w_dec, axes, live)
    if lm is not None:
        row.update(_loss_recovered(weights or run_dir, store, *lm))
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
    checkpoints: bool = False, device: str = "cpu",
):  # fmt: skip
    """Evaluate every finished run into ``<results>/eval``; with ``checkpoints`` also every snapshot
    a run kept (unfinished runs included) into ``<results>/checkpoints`` (the same columns, one row
    per snapshot, ``tokens`` says when). Returns the final rows (new and cached) as a DataFrame."""
    dirs = [Path(d) for d in run_dirs if (Path(d) / TRAIN_CFG).exists()]
    if not dirs:
        raise SagsaeError("no run directories matched (each holds train_cfg.json): check the paths")
    items = []  # (run dir, snapshot dir or None for the final SAE)
    for d in dirs:
        finished, snaps = (d / SAE_WEIGHTS).exists(), (snapshot_dirs(d) if checkpoints else [])
        if not finished and not snaps:
            raise SagsaeError(f"{d} has not finished training: rerun its `sagsae train` command first")
        items += [(d, snap) for snap in snaps] + ([(d, None)] if finished else [])
    if Path(results).exists() and not Path(results).is_dir():
        raise SagsaeError(f"--results {results} is a file, not a directory: choose another --results")
    tables = {name: Path(results) / name for name in ("eval", "census", "checkpoints")}
    rows, lms = [], {}
    dev = pick_device(device)
    eval_rows = {d: _eval_rows(d) for d in dirs}  # one store open per run, not per snapshot
    with progress_bar("eval", total=len(items), unit="SAE", quiet=quiet) as bar:
        for d, snap in items:
            bar.note(f"{d.parent.name}/{d.name}" + (f" @ {snapshot_tokens(snap):,} tokens" if snap else ""))
            part = tables["checkpoints" if snap else "eval"] / part_name(d, snap)
            weights = snap or d
            key = cache_key(weights, eval_tokens=min(eval_tokens, eval_rows[d]),
                            bipolar_threshold=bipolar_threshold, lr_windows=0 if snap else lr_windows,
                            model=None if snap else model)  # fmt: skip
            old = None if force or not part.exists() else _read_part(part)
            # rows cached before the objective was recorded are recomputed once
            if (
                old is not None
                and "cache_key" in old
                and old["cache_key"].iloc[0] == key
                and "objective" in old
            ):
                row = old.iloc[0].to_dict()
            else:  # snapshots skip loss recovered: it would dominate the time of a convergence curve
                lm = None if snap else _lm_for(d, lr_windows, model, lms)
                row, census = evaluate_run(
                    d, eval_tokens, bipolar_threshold=bipolar_threshold, lm=lm, weights=snap, device=dev
                )
                row["cache_key"] = key
                if not snap:
                    write_parquet(census, tables["census"] / part.name)
                write_parquet(pd.DataFrame([row]), part)
                fault_point("eval")
            if not snap:
                rows.append(row)
            bar.advance(1)
    return pd.DataFrame(rows)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a table file atomically, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: frame.to_parquet(p, index=False), flag="--results")


def cache_key(run_dir: Path, **settings) -> str:
    """What a cached row depends on: the evaluation settings and the SAE's weights (a run retrained
    with --force gets a new row)."""
    h = hashlib.sha256()
    with open(run_dir / SAE_WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return json.dumps({**settings, "weights": h.hexdigest()[:16]}, sort_keys=True)


def _read_part(path: Path):
    """A cached part file, or None if it is unreadable (it is then recomputed and replaced)."""
    try:
        return pd.read_parquet(path)
    except Exception:
        return None


def part_name(run_dir: Path, snapshot: Path | None = None) -> str:
    """Part file of a run (or of one of its snapshots): its name plus a hash of its full path, so runs
    with the same id in different directories (one per hookpoint, say) never overwrite each other."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
    tail = f"-t{snapshot_tokens(snapshot):013d}" if snapshot else ""
    return f"{run_dir.name}-{digest}{tail}.parquet"


def eval_rows_for(run_dir: Path, sae, store, tokens: int, fix: str = "") -> int:
    """How many of ``store``'s eval rows to use for ``sae`` (at most ``tokens``); a store of another
    width or without eval rows is one line (``fix``: what to do about the former)."""
    if store.d != sae.cfg.d_in:
        raise SagsaeError(
            f"{run_dir} has d_in={sae.cfg.d_in} but the store {store.path} has d={store.d}"
            + (f": {fix}" if fix else "")
        )
    n = min(tokens, store.rows("eval"))
    if n == 0:
        raise SagsaeError(f"store {store.path} has no eval rows: harvest it again with --eval-tokens > 0")
    return n


def run_store(run_dir: Path):
    """The store a run was trained on (recorded in train_cfg.json)."""
    cfg = read_train_cfg(run_dir)
    path = Location(cfg.get("extra", {}).get("store") or cfg["store"])
    if not path.exists():
        raise SagsaeError(
            f"the store of {run_dir} is gone from {path}: move it back (or symlink it there) to evaluate this run"
        )
    return open_store(path)


def snapshots_on_held_out(run_dir: Path, eval_tokens: int, store=None):
    """(snapshot dir, its SAE, tokens or None for the final SAE, held-out rows) for every snapshot of a
    run and then the run itself, all on the same first ``eval_tokens`` eval rows of its store (the
    probes in examples/ read a run's history this way; ``store``: the run's store, if already open)."""
    run_dir, rows = Path(run_dir), None
    store = run_store(run_dir) if store is None else store
    for snap in [*snapshot_dirs(run_dir), run_dir]:
        sae, _ = load_sae(snap)
        if rows is None:
            n = eval_rows_for(run_dir, sae, store, eval_tokens)
            rows = torch.cat([x.float() for x in sequential_batches(store, "eval", 8192, max_rows=n)])
        yield snap, sae, (None if snap == run_dir else snapshot_tokens(snap)), rows


def _eval_rows(run_dir: Path) -> int:
    return run_store(run_dir).rows("eval")


def read_table(results: str | Path, table: str = "eval") -> pd.DataFrame:
    parts = sorted((Path(results) / table).glob("*.parquet"))
    if not parts:
        maker = {"ablation": "ablate", "census": "eval", "checkpoints": "eval --checkpoints"}.get(
            table, table
        )
        raise SagsaeError(f"table {table!r} in {results} is empty: run `sagsae {maker}` first")
    return pd.concat([read_parquet(p, REEVAL) for p in parts], ignore_index=True)


def _lm_for(run_dir: Path, lr_windows: int, override: str | None, cache: dict):
    """(model, tokenizer, windows) for loss recovered, or None (synthetic store, or disabled)."""
    if lr_windows <= 0:
        return None
    store = run_store(run_dir)
    if store.meta.get("source") != "lm":
        return None
    from sagsae_cli.models import store_model

    return (*store_model(store, cache, override), lr_windows)
