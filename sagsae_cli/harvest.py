"""`sagsae harvest` for language models: text -> windows -> forward to layer L -> activation stores.

One forward pass fills one store per requested hookpoint. Position 0 (BOS / attention sink) is
skipped unless ``keep_bos``; tokens whose norm exceeds ``max_norm_ratio`` x the median norm (measured
on the first batch and kept for the whole harvest) are dropped and counted (docs/METHOD.md §6). Stores
are committed every few seconds with a per-store cursor (windows done per split), so a killed
harvest resumes at its last commit and ends identical to an uninterrupted one.

Under ``torchrun --nproc-per-node K``, rank r runs the forward pass of every K-th batch (disjoint
windows), rank 0 gathers the activations and writes them in window order: the store equals a
one-process harvest's, and a harvest may be resumed with another number of processes.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sagsae_cli.data import iter_windows, windows_for
from sagsae_cli.distributed import from_main, init_world, on_main, pick_device, warn_of_busy_cores
from sagsae_cli.errors import SagsaeError
from sagsae_cli.hooks import decoder_layers, family_of, hook_definition, parse_hook, run_to_layer
from sagsae_cli.location import Location
from sagsae_cli.models import load_model
from sagsae_cli.progress import progress_bar
from sagsae_cli.rows import DTYPE_ALIASES, check_norm_ratio
from sagsae_cli.store import StoreWriter
from sagsae_cli.threads import Behind

COMMIT_SECONDS = 5.0  # stores are committed this often (and at the end); SAGSAE_COMMIT_SECONDS overrides
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class HarvestConfig:
    model: str = "smollm2-135m"
    revision: str | None = None
    hooks: tuple[str, ...] = ("resid_mid",)
    layer: int | None = None  # default: n_layers // 2
    dataset: str = "shakespeare"
    dataset_split: str = "train"
    text_column: str = "text"
    context: int = 128
    tokens: int = 1_000_000
    eval_tokens: int = 100_000
    batch_size: int = 16  # windows per forward
    keep_bos: bool = False
    max_norm_ratio: float = 10.0  # 0 disables the filter
    dtype: str = "bfloat16"  # store dtype (docs/METHOD.md §8)
    model_dtype: str = "auto"  # bf16 on CUDA, fp32 on CPU
    device: str = "auto"


def _store_paths(out: str, hooks: tuple[str, ...]) -> dict[str, Location]:
    root = Location(out)
    return {h: root for h in hooks} if len(hooks) == 1 else {h: root.child(h) for h in hooks}


def harvest(cfg: HarvestConfig, out: str, *, force: bool = False, quiet: bool = False) -> dict[str, Path]:
    parsed = [parse_hook(h, cfg.layer) for h in cfg.hooks]
    hooks = tuple(h for h, _ in parsed)
    layers = {lay for _, lay in parsed if lay is not None}
    if len(layers) > 1 or (layers and cfg.layer is not None and layers != {cfg.layer}):
        raise SagsaeError("all hooks of one harvest must be at the same layer")
    if cfg.context < 2 or cfg.tokens <= 0 or cfg.eval_tokens < 0 or cfg.batch_size <= 0:
        raise SagsaeError("--context must be >= 2, --tokens and --batch-size positive, --eval-tokens >= 0")
    check_norm_ratio(cfg.max_norm_ratio)
    device = pick_device(cfg.device)
    world = init_world(device)
    warn_of_busy_cores(device, world, quiet)  # the model's forwards wait on busy cores as training does
    mdtype = (
        cfg.model_dtype if cfg.model_dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    )
    mdtype = DTYPE_ALIASES.get(mdtype, mdtype)
    if mdtype not in TORCH_DTYPES:
        raise SagsaeError(f"--model-dtype must be auto, float32, bfloat16 or float16 (got {mdtype!r})")
    model, tok, source = load_model(cfg.model, cfg.revision, TORCH_DTYPES[mdtype], device)
    mtype, fam = family_of(model)
    n_layers = len(decoder_layers(model, fam))
    layer = next(iter(layers)) if layers else (cfg.layer if cfg.layer is not None else n_layers // 2)
    if not 0 <= layer < n_layers:
        raise SagsaeError(f"--layer {layer} is out of range: {cfg.model} has layers 0..{n_layers - 1}")
    d = model.config.hidden_size
    skip = 0 if cfg.keep_bos else 1
    base = {**asdict(cfg), "hooks": None, "layer": layer, "device": None, "model_dtype": mdtype}
    eval_windows = windows_for(cfg.eval_tokens, cfg.context, bool(skip))
    eval_windows += math.ceil(0.05 * eval_windows) if cfg.eval_tokens else 0  # slack for dropped tokens
    stream = iter_windows(cfg.dataset, tok, cfg.context, eval_windows, cfg.dataset_split, cfg.text_column)
    stream = itertools.chain([next(stream)], stream)  # a bad dataset fails here, before any store exists
    writers = {}  # rank 0 only

    def open_writers():
        for hook, path in _store_paths(out, hooks).items():
            meta = {
                "source": "lm", "model": cfg.model, "model_source": source, "revision": cfg.revision,
                "architecture": mtype, "n_layers": n_layers, "layer": layer, "hook": hook,
                "hook_name": f"blocks.{layer}.hook_{hook}", "hook_definition": hook_definition(model, hook, layer),
                "dataset": cfg.dataset, "dataset_split": cfg.dataset_split, "context": cfg.context,
                "keep_bos": cfg.keep_bos, "max_norm_ratio": cfg.max_norm_ratio, "model_dtype": mdtype,
            }  # fmt: skip
            writers[hook] = StoreWriter(
                path, d=d, dtype=cfg.dtype, config={**base, "hook": hook}, meta=meta, force=force
            )

    try:
        on_main(open_writers, world)
        _run(cfg, stream, model, writers, hooks, layer, skip, world, quiet)
    finally:
        for w in writers.values():
            w.close()
    return {h: w.path for h, w in writers.items()}


def _commit_seconds() -> float:
    return float(os.environ.get("SAGSAE_COMMIT_SECONDS", COMMIT_SECONDS))


def _run(cfg, stream, model, writers, hooks, layer, skip, world, quiet) -> None:
    """Stream windows in rounds of ``world.size`` batches: rank r runs batch r of each round, rank 0
    gathers the activations and appends them in window order, so the store is the same for any
    number of processes. Writers exist on rank 0 only; it decides and broadcasts what to compute."""
    if from_main(all(w.complete for w in writers.values()), world):
        return
    targets = {"eval": cfg.eval_tokens, "train": cfg.tokens}
    done = {"eval": 0, "train": 0}  # windows consumed per split in this pass over the stream
    last_commit, every = [time.monotonic()], _commit_seconds()
    failure = None  # rank 0's SagsaeError, raised on every rank at the next plan
    label = f"harvest {','.join(hooks)} L{layer}" + (f" x{world.size} ranks" if world.active else "")

    def write(split, batches, starts, staged, plan) -> None:
        """On the writer thread: one round's activations, once their copies to the host have landed,
        filtered and appended in window order; the stores committed every few seconds."""
        for batch, first, per_hook in zip(batches, starts, staged):
            if batch:
                for _, copied in per_hook:
                    if copied is not None:
                        copied.synchronize()
                acts = [a for a, _ in per_hook]
                ids = torch.tensor(batch)
                bar.advance(_append_batch(writers, plan, split, acts, ids, first, skip, cfg, targets[split]))
        if time.monotonic() - last_commit[0] >= every:
            for w in writers.values():
                w.commit()
            last_commit[0] = time.monotonic()

    # rank 0 appends and commits on a thread of its own (Behind), so the next forward pass is not held up
    # by the device-to-host copy, the norm filter or the Zarr write
    with (
        progress_bar(label, total=sum(targets.values()), quiet=quiet or not world.main) as bar,
        Behind(depth=2) as behind,
    ):
        bar.advance(min((w.rows("eval") + w.rows("train") for w in writers.values()), default=0))
        for split, group in itertools.groupby(stream, key=lambda t: t[0]):
            group = (ids for _, ids in group)
            while True:
                batches = [list(itertools.islice(group, cfg.batch_size)) for _ in range(world.size)]
                if not batches[0]:
                    break  # every rank reads the same stream, so every rank stops here
                starts = list(itertools.accumulate((len(b) for b in batches[:-1]), initial=done[split]))
                plan = from_main(failure or _plan(writers, split, starts[-1], targets[split]), world)
                if plan is None:
                    break  # this split is full in every store (train: stop reading documents)
                done[split] = starts[-1] + len(batches[-1])
                if not plan:
                    continue  # already committed by an earlier (interrupted) run
                shape = (len(batches[0]), len(batches[0][0]))
                acts = _forward(model, batches[world.rank], shape, plan, layer, world)
                if not world.main:
                    continue
                staged = [[_to_host(a) for a in per_rank] for per_rank in acts]  # copies issued, not awaited
                try:
                    behind.submit(partial(write, split, batches, starts, staged, plan))
                except SagsaeError as e:
                    if not world.active:
                        raise
                    failure = e  # the other ranks wait for the next round's plan: send it there
            if split == "train":
                break
        try:
            behind.drain()
        except SagsaeError as e:
            if not world.active:
                raise
            failure = failure or e
        if failure:
            raise failure  # the stream ended with that round: the other ranks have already left
        for w in writers.values():
            if targets["train"] and w.rows("train") == 0:
                w.commit()
                raise SagsaeError(
                    f"{cfg.dataset} gave no train tokens for {w.path} (every document went to the eval "
                    "split, or every token was filtered): give a larger text dataset or lower --eval-tokens"
                )
            short = [s for s in ("eval", "train") if w.rows(s) < targets[s]]
            if short:
                w.set_meta(
                    note=f"dataset exhausted: {', '.join(f'{s} has {w.rows(s):,} rows' for s in short)}"
                )
            w.commit(complete=True)


def _to_host(a: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """``a`` copied to the host in its own dtype: on CUDA into page-locked memory without waiting, with
    the event the writer thread waits on before it reads the copy."""
    if a.device.type != "cuda":
        return a, None
    host = torch.empty(a.shape, dtype=a.dtype, pin_memory=True)
    host.copy_(a, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def _plan(writers, split, last_start, target):
    """Hooks to compute this round (those with a batch not yet written), or None if all are full."""
    if not writers:
        return []  # not rank 0: the broadcast replaces this
    if all(w.rows(split) >= target for w in writers.values()):
        return None
    return [h for h, w in writers.items() if w.cursor.get(f"{split}_windows", 0) <= last_start
            and w.rows(split) < target]  # fmt: skip


def _forward(model, batch, shape, hooks, layer, world) -> list:
    """Per rank, the activations of its batch for each hook ((windows, context, d) each). One process:
    [this batch's]. Several: rank 0 gets every rank's, zero-padded to ``shape`` = (windows, context)
    of the round's first batch, in rank order; the others get []."""
    if batch:
        with torch.no_grad():
            got = run_to_layer(model, torch.tensor(batch, device=world.device), hooks, layer)
    if not world.active:
        return [[got[h] for h in hooks]]
    full = torch.zeros(len(hooks), *shape, model.config.hidden_size, dtype=model.dtype, device=world.device)
    for i, h in enumerate(hooks if batch else ()):
        full[i, : len(batch)] = got[h]
    bucket = [torch.empty_like(full) for _ in range(world.size)] if world.main else None
    dist.gather(full, bucket, dst=0)
    return bucket or []


def _append_batch(writers, plan, split, acts, ids, first, skip, cfg, target) -> int:
    """Append one batch (``acts``: per hook, possibly zero-padded beyond the batch's windows) to each
    store that still needs it; returns tokens written (counted once)."""
    written = None
    for hook, a in zip(plan, acts):
        w = writers[hook]
        if w.cursor.get(f"{split}_windows", 0) > first or w.rows(split) >= target:
            continue
        n = _append(w, split, a[: ids.shape[0]], ids, first, skip, cfg, target)
        w.cursor[f"{split}_windows"] = first + ids.shape[0]
        written = n if written is None else written
    return written or 0


def _append(w: StoreWriter, split, acts, ids, first_window, skip, cfg, target) -> int:
    """Filter and append one batch's rows (on the host) to one store; returns rows written. The norms and
    the finite check are taken in float32; the rows are appended in the model's dtype (bf16 stays bf16
    into a bf16 store: the same values as through a float32 copy, which bf16 -> fp32 -> bf16 gives back)."""
    b, t, d = acts.shape
    rows = acts[:, skip:].reshape(-1, d)
    x = rows.float()
    finite = torch.isfinite(x).all(dim=1)
    if not finite.all():  # the norm filter would silently drop such rows: refuse instead
        i = int((~finite).nonzero()[0, 0])
        raise SagsaeError(
            f"{w.path}: the model's activations contain NaN or inf (window {first_window + i // (t - skip)}, "
            f"position {skip + i % (t - skip)}): check the model's weights; if --model-dtype is float16, "
            "use bfloat16 or float32"
        )
    tok = ids[:, skip:].reshape(-1)
    pos = torch.arange(skip, t).repeat(b)
    seq = (first_window + torch.arange(b)).repeat_interleave(t - skip)
    seq = seq + (0 if split == "eval" else 1_000_000_000)  # splits never share a sequence id
    norms = x.norm(dim=1)
    cursor = w.cursor
    if "median_norm" not in cursor:
        cursor["median_norm"] = float(norms.median())
    keep = torch.ones_like(norms, dtype=torch.bool)
    if cfg.max_norm_ratio > 0:
        keep = norms <= cfg.max_norm_ratio * cursor["median_norm"]
    room = target - w.rows(split)
    idx = keep.nonzero().squeeze(1)[:room]
    dropped = int((~keep).sum())
    cursor[f"{split}_dropped"] = cursor.get(f"{split}_dropped", 0) + dropped
    cursor[f"{split}_seen"] = cursor.get(f"{split}_seen", 0) + int(norms.numel())
    w.append(
        split,
        rows[idx],
        token_ids=tok[idx].numpy().astype(np.int32),
        positions=pos[idx].numpy().astype(np.int32),
        sequence_ids=seq[idx].numpy(),
    )
    return int(idx.numel())
