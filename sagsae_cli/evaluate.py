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
from sagsae_cli.errors import SagsaeError, require
from sagsae_cli.faults import fault_point
from sagsae_cli.files import REEVAL, SAE_WEIGHTS, atomic_write, read_parquet, snapshot_dirs, snapshot_tokens
from sagsae_cli.files import train_cfg as read_train_cfg
from sagsae_cli.location import Location
from sagsae_cli.metrics import (
    R2,
    Census,
    axis_recovery,
    census_summary,
    cofiring,
    fired,
    latents_per_axis,
    opposed_pairs,
    opposed_summary,
    pairs_table,
)
from sagsae_cli.progress import progress_bar
from sagsae_cli.reader import sequential_batches
from sagsae_cli.sae import load_sae
from sagsae_cli.splice import lm_of_store, splice_loss
from sagsae_cli.store import open_store

PAIR_COS, PAIR_COFIRE = 0.9, 0.05  # eval's opposed-pairs census: decoder cosine <= -0.9, co-firing <= 5%


def measure(forward, w_dec: torch.Tensor, store, n: int, device, batch: int = 4096, tau: float = PAIR_COS):
    """The metrics of one SAE over the first ``n`` eval rows of ``store`` (normalised rows):
    ``forward(x) -> (f, x_hat, losses)`` in normalised units; ``w_dec`` (latents x d) gives the candidate
    opposed pairs (decoder cosine <= -``tau``), whose firing and co-firing are counted in the same pass.
    Returns (metric fields, census table, live mask, pairs table). Shared by sagsae's runs and SAEs made
    elsewhere."""
    d_sae = w_dec.shape[0]
    r2, active, live = R2(), 0, torch.zeros(d_sae, dtype=torch.bool, device=device)
    census = Census(d_sae, device=device)
    pairs = opposed_pairs(w_dec, tau)
    fires = torch.zeros(d_sae, dtype=torch.long, device=device)
    both = torch.zeros(len(pairs), dtype=torch.long, device=device)
    terms: dict[str, float] = {}  # the training loss's terms, summed over tokens
    with torch.no_grad():
        for x in sequential_batches(store, "eval", batch, max_rows=n):
            x = x.to(device)
            f, x_hat, losses = forward(x)
            for name, value in losses.items():
                terms[name] = terms.get(name, 0.0) + float(value) * x.shape[0]
            r2.update(x, x_hat)  # also the squared error, summed in float64
            active += int((f != 0).sum())
            live |= fired(f)
            census.update(f)
            per_latent, per_pair = cofiring(f, pairs)
            fires += per_latent
            both += per_pair
    row = {"eval_tokens": n, "r2": r2.value(), "mse": r2.sse / n, "l0": active / n,
           "dead_frac": 1.0 - float(live.float().mean())}  # fmt: skip
    if terms:
        # the held-out training objective at the SAE's coefficient (cfg.json's l1: for target-L0 runs
        # the one it had then), and its terms: what `compare` reads tokens_to_objective from
        row["objective"] = sum(terms.values()) / n
        row.update({f"objective_{name}": value / n for name, value in terms.items()})
    table = pairs_table(pairs, fires.cpu(), both.cpu(), n)
    row.update(opposed_summary(table, int(live.sum()), PAIR_COFIRE))
    return row, census.table(), live, table


def _finish_row(row: dict, census_table: pd.DataFrame, live, w_dec, store, bipolar_threshold: float) -> None:
    """The census summary and axis recovery (synthetic stores) of a row."""
    row.update(census_summary(census_table, bipolar_threshold))
    truth = store.truth()
    if truth is not None:
        axes, w_dec, live = torch.from_numpy(truth["axes"]), w_dec.detach().float().cpu(), live.cpu()
        row["axis_recovery"] = axis_recovery(w_dec, axes, live)
        row["latents_per_axis"] = latents_per_axis(w_dec, axes, live)


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

    def forward(x):
        out = sae(x)  # the SAE's encode/decode plus its loss terms at its own coefficient
        return out.f, out.x_hat, out.losses

    metrics, census_table, live, _ = measure(forward, sae.W_dec.detach(), store, n, device, batch)
    row = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "source": "sagsae",
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
        "tokens": snapshot_tokens(weights) if weights else steps * int(train_cfg["batch"]),
        "final": weights is None,
        **metrics,
        "params": sae.param_count(),
        "bipolar_threshold": bipolar_threshold,
    }
    _finish_row(row, census_table, live, sae.W_dec, store, bipolar_threshold)
    if lm is not None:
        row.update(_loss_recovered(weights or run_dir, store, *lm))
    census_table.insert(0, "run", run_dir.name)
    census_table.insert(1, "hook", row["hook"])
    return row, census_table


def evaluate_foreign(
    sae_dir: Path, store, eval_tokens: int, batch: int = 4096, bipolar_threshold: float = 0.1, lm=None,
    device: str | torch.device = "cpu", allow_mismatch: bool = False,
):  # fmt: skip
    """(summary row, census table) of an SAE made elsewhere (``foreign.load_foreign``) on ``store``'s eval
    split. It acts on raw activations: each normalised row is scaled back by the store's norm factor
    before it is encoded, and the reconstruction divided by it, so R² and MSE are in the same units as
    for sagsae's own runs."""
    from sagsae_cli.foreign import load_foreign

    fs = load_foreign(sae_dir).to(device)
    n = eval_rows_for(sae_dir, fs, store, eval_tokens)
    check_pairing(fs, store, allow_mismatch)
    metrics, census_table, live, _ = measure(foreign_forward(fs, store), fs.W_dec, store, n, device, batch)
    row = {"run": sae_dir.name, "run_dir": str(sae_dir), "source": fs.source, "variant": fs.name,
           "width": fs.d_sae, "l1": float("nan"), "l1_final": float("nan"), "target_l0": 0.0, "k": fs.k,
           "seed": 0, "model": store.meta.get("model", ""), "hook": store.meta.get("hook", ""),
           "tokens": 0, "final": True, **metrics,
           "params": int(sum(v.numel() for v in fs.t.values())), "bipolar_threshold": bipolar_threshold}  # fmt: skip
    _finish_row(row, census_table, live, fs.W_dec, store, bipolar_threshold)
    if lm is not None:
        row.update(splice_loss(store, *lm, lambda x: fs.forward(x)[1]))
    census_table.insert(0, "run", sae_dir.name)
    census_table.insert(1, "hook", row["hook"])
    return row, census_table


def foreign_forward(fs, store):
    """``measure``'s forward for an SAE made elsewhere: it acts on raw activations, so each normalised row
    is scaled back by the store's norm factor and the reconstruction divided by it."""
    s = store.norm_factor

    def forward(x):
        f, x_hat = fs.forward(x * s)
        return f, x_hat / s, {}

    return forward


def check_pairing(fs, store, allow_mismatch: bool = False) -> None:
    """An SAE made elsewhere and a store must belong together: the same d, and the model and hook each
    records (when both do) must agree; ``allow_mismatch`` lets the names (never d) differ."""
    if allow_mismatch:
        return
    for what, mine, theirs in (("model", fs.model_name, store.meta.get("model", "")),
                               ("hook", fs.hook_name, store.meta.get("hook_name") or store.meta.get("hook", ""))):  # fmt: skip
        if mine and theirs and not _same_name(what, mine, theirs, store):
            raise SagsaeError(
                f"{fs.path} was trained on {what} {mine!r} but the store {store.path} holds {what} {theirs!r}: "
                "choose the matching store, or pass --allow-mismatch to evaluate it anyway (d matches)"
            )


def _same_name(what: str, mine: str, theirs: str, store) -> bool:
    """Model ids match by their last path part (EleutherAI/pythia-70m = pythia-70m); hooks by
    TransformerLens name, sagsae name or the store's recorded names."""
    if what == "model":
        tail = lambda s: s.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
        return (
            tail(mine) == tail(theirs)
            or tail(mine) in tail(store.meta.get("model_source", ""))
            or tail(theirs).startswith(tail(mine))
        )
    names = {theirs, store.meta.get("hook", ""), store.meta.get("hook_name", "")}
    layer = store.meta.get("layer")
    if layer is not None:  # sparsify's module paths: layers.L (resid_post), layers.L.mlp, layers.L.self_attn
        hook = store.meta.get("hook", "")
        names |= {f"layers.{layer}.mlp" if hook == "mlp_out" else "", f"layers.{layer}.self_attn" if hook == "attn_out" else "",
                  f"layers.{layer}" if hook == "resid_post" else "", f"layer {layer}"}  # fmt: skip
    return mine in names - {""}


def _loss_recovered(run_dir: Path, store, model, tokenizer, max_windows: int) -> dict:
    raw_sae, _ = load_sae(run_dir, normalised=False)  # folded weights act on raw activations
    return splice_loss(store, model, tokenizer, max_windows, lambda x: raw_sae.decode(raw_sae.encode(x)))


def evaluate(
    run_dirs: list[str], results: str | Path, eval_tokens: int = 100_000, force: bool = False,
    bipolar_threshold: float = 0.1, lr_windows: int = 16, model: str | None = None, quiet: bool = False,
    checkpoints: bool = False, device: str = "cpu", store: str | None = None, allow_mismatch: bool = False,
):  # fmt: skip
    """Evaluate every finished run into ``<results>/eval``; with ``checkpoints`` also every snapshot
    a run kept (unfinished runs included) into ``<results>/checkpoints`` (the same columns, one row
    per snapshot, ``tokens`` says when). SAE directories made elsewhere (SAELens, sparsify,
    dictionary_learning: ``foreign``) are evaluated on ``store``, which they need. Returns the final rows
    (new and cached) as a DataFrame."""
    from sagsae_cli.foreign import detect

    require(
        0 <= bipolar_threshold <= 0.5,
        f"--bipolar-threshold is a minority share in [0, 0.5] (got {bipolar_threshold:g})",
    )
    require(lr_windows >= 0, f"--lr-windows must be >= 0 (got {lr_windows})")

    sources, skipped = {}, []
    for d in map(Path, run_dirs):  # shell globs may also match other files: those are skipped
        try:
            sources[d] = detect(d)
        except SagsaeError as e:
            skipped.append(e)
    if not sources:
        raise skipped[0] if skipped else SagsaeError("no run directories given")
    dirs = list(sources)
    foreign = [d for d in dirs if sources[d] != "sagsae"]
    if foreign and store is None:
        raise SagsaeError(
            f"{foreign[0]} was made by {sources[foreign[0]]}, not sagsae: give the store of its hookpoint with --store"
        )
    shared = open_store(store) if store is not None else None
    if shared is not None:
        shared.check_chunks()
    items = []  # (run dir, snapshot dir or None for the final SAE)
    for d in dirs:
        if d in foreign:
            items.append((d, None))
            continue
        finished, snaps = (d / SAE_WEIGHTS).exists(), (snapshot_dirs(d) if checkpoints else [])
        if not finished and not snaps:
            raise SagsaeError(f"{d} has not finished training: rerun its `sagsae train` command first")
        items += [(d, snap) for snap in snaps] + ([(d, None)] if finished else [])
    if Path(results).exists() and not Path(results).is_dir():
        raise SagsaeError(f"--results {results} is a file, not a directory: choose another --results")
    tables = {name: Path(results) / name for name in ("eval", "census", "checkpoints")}
    rows, lms = [], {}
    dev = pick_device(device)
    eval_rows = {
        d: (shared.rows("eval") if d in foreign else _eval_rows(d)) for d in dirs
    }  # one store open per run
    with progress_bar("eval", total=len(items), unit="SAE", quiet=quiet) as bar:
        for d, snap in items:
            bar.note(f"{d.parent.name}/{d.name}" + (f" @ {snapshot_tokens(snap):,} tokens" if snap else ""))
            part = tables["checkpoints" if snap else "eval"] / part_name(d, snap)
            weights = snap or d
            key = cache_key(weights, eval_tokens=min(eval_tokens, eval_rows[d]),
                            bipolar_threshold=bipolar_threshold, lr_windows=0 if snap else lr_windows,
                            model=None if snap else model,
                            **({"store": shared.path.canonical()} if d in foreign else {}))  # fmt: skip
            old = None if force or not part.exists() else _read_part(part)
            # rows cached before the objective (sagsae's own SAEs) and the opposed pairs were recorded
            # (0.1.0's rows) are recomputed once
            needed = {"opposed_pairs"} | (set() if d in foreign else {"objective"})
            if (
                old is not None
                and old.get("cache_key", pd.Series([None])).iloc[0] == key
                and needed <= set(old)
            ):
                row = old.iloc[0].to_dict()
            else:  # snapshots skip loss recovered: it would dominate the time of a convergence curve
                if d in foreign:
                    lm = lm_of_store(shared, lr_windows, model, lms)
                    row, census = evaluate_foreign(d, shared, eval_tokens, bipolar_threshold=bipolar_threshold,
                                                   lm=lm, device=dev, allow_mismatch=allow_mismatch)  # fmt: skip
                else:
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
    weights = next(run_dir / n for n in (SAE_WEIGHTS, "sae.safetensors", "ae.pt") if (run_dir / n).exists())
    with open(weights, "rb") as f:
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
    d_in = sae.cfg.d_in if hasattr(sae, "cfg") else sae.d_in
    if store.d != d_in:
        raise SagsaeError(
            f"{run_dir} has d_in={d_in} but the store {store.path} has d={store.d}: "
            + (fix or "choose the store of the hookpoint this SAE was trained on")
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
    return lm_of_store(run_store(run_dir), lr_windows, override, cache) if lr_windows > 0 else None
