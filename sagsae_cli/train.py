"""The sweep driver (`sagsae train`): every config of a sweep trained in one pass over the data, each
batch read once and fed to every unfinished run, resumed from checkpoints, with locks on the run
directories, a progress bar, SIGINT/SIGTERM as a clean stop, and wandb logging when asked. Under
torchrun each rank reads its own shard and rank 0 writes.

A run directory holds ``cfg.json`` (the SAE, SAELens-style) + ``sae_weights.safetensors`` when done,
``train_cfg.json`` (what produced it), ``checkpoints/last.pt`` and ``history.parquet``.
The recipe lives in ``recipe.py``, one run in ``run.py``.
"""

from __future__ import annotations

import signal
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from sagsae_cli.distributed import all_agree, barrier, init_world, pick_device, warn_of_busy_cores
from sagsae_cli.errors import SagsaeError
from sagsae_cli.files import lock_dir, unlock
from sagsae_cli.location import Location
from sagsae_cli.progress import console, progress_bar, styled
from sagsae_cli.reader import DeviceFeed, ShuffledBatches
from sagsae_cli.recipe import FEW_STEPS, MIN_BATCH, TrainConfig
from sagsae_cli.registry import architecture, has_thresholds, resets_latents
from sagsae_cli.run import Run
from sagsae_cli.store import open_store


class RunLocks:
    """Exclusive locks (flock on ``<run>/.lock``) on the run directories a process trains, so a
    second `sagsae train` on the same runs is refused instead of interleaving checkpoints."""

    def __init__(self):
        self.fds: list[int] = []

    def take(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fds.append(lock_dir(run_dir, "training"))

    def release(self) -> None:
        for fd in self.fds:
            unlock(fd)
        self.fds.clear()


def train(
    cfgs: list[TrainConfig],
    out: str | Path,
    *,
    force: bool = False,
    quiet: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    wandb_project: str | None = None,
    allow_incomplete: bool = False,
) -> list[Path]:
    """Train every config (all must share store, tokens, batch and data seed) in one pass over the
    data: each batch is read once and fed to every unfinished run. Resumes from checkpoints.

    ``dtype``: ``bf16`` runs the forward under bfloat16 autocast (fp32 master weights and
    optimiser); ``auto`` picks bf16 on CUDA and fp32 elsewhere.
    """
    if not cfgs:
        raise SagsaeError("nothing to train")
    base = cfgs[0]
    for c in cfgs:
        c.validate()
        shared = ("store", "tokens", "batch", "data_seed", "data_shards")
        if any(getattr(c, k) != getattr(base, k) for k in shared):
            raise SagsaeError(
                "runs of one sweep must share --store, --tokens, --batch and the data seed/shards"
            )
    dev = pick_device(device)
    world = init_world(dev)
    shards = base.data_shards or world.size
    if world.active and shards != world.size:
        raise SagsaeError(f"--data-shards {shards} must equal the number of processes ({world.size}) or be 0")
    local = sorted({c.reset_mode for c in cfgs} - {"threshold"})
    if world.active and local:
        raise SagsaeError(
            f"--reset-mode {local[0]} runs in one process only (each process would reset latents from its "
            "own tokens): train without torchrun, or with --reset-mode threshold"
        )
    if base.batch % shards:
        raise SagsaeError(f"--batch {base.batch} must divide evenly into {shards} shards")
    dtype = {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)  # harvest's names work here too
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise SagsaeError(f"--dtype must be auto, fp32 or bf16 (got {dtype!r})")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    slow = sorted({c.variant for c in cfgs if architecture(c.variant).slow})
    if world.main and slow and base.steps < FEW_STEPS and not quiet:
        console.print(
            styled("yellow", "warning", ": ")
            + f"{base.steps:,} optimizer steps ({base.tokens:,} tokens / batch "
            f"{base.batch:,}) may stop {', '.join(slow)} before it converges (it needs more steps than the "
            f"Gated SAE; docs/METHOD.md §8): "
            + ("use --batch auto or a smaller --batch, or " if base.batch > MIN_BATCH else "")
            + "give it more --tokens (several epochs of the store are fine), and check with "
            "`sagsae eval --checkpoints`",
            highlight=False,
        )
    warn_of_busy_cores(dev, world, quiet)
    store = open_store(base.store)
    store.check_ready(allow_incomplete)
    if store.rows("train") == 0:
        raise SagsaeError(f"store {base.store} has no train rows: finish `sagsae harvest` first")
    if base.batch > store.rows("train"):
        raise SagsaeError(
            f"--batch {base.batch:,} exceeds the store's {store.rows('train'):,} train rows: "
            "choose a smaller --batch or harvest more tokens"
        )
    store.check_chunks()
    # on CUDA the rows travel in the store's dtype through page-locked staging buffers and are widened and
    # scaled on the device (DeviceFeed); on CPU the reader's thread does both, as before
    on_device = dev.type == "cuda"
    reader = ShuffledBatches(
        store, base.batch // shards, seed=base.data_seed, world_size=shards,
        rank=world.rank if world.active else None, widen=not on_device,
    )  # fmt: skip
    sample = store.read("train", 0, min(store.rows("train"), 65536), normalise=True)
    extra = {"store": Location(base.store).canonical(), "model_name": store.meta.get("model", ""),
             "hook_name": store.meta.get("hook_name") or store.meta.get("hook", ""), "norm_factor": store.norm_factor}  # fmt: skip
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SagsaeError(f"--out {out} is a file, not a directory: choose another --out")
    locks = RunLocks()
    try:
        runs = [
            Run(replace(c, extra={**extra, **c.extra}), store.d, out, sample, world, force, locks)
            for c in cfgs
        ]
        barrier(world)
        return _train_runs(runs, base, store, reader, world, dev, autocast, quiet, wandb_project)
    finally:
        locks.release()


def plan(runs: list[Run], base: TrainConfig) -> str:
    """One line on what a sweep is about to do: steps, batch, lr, and the threshold lr multiple and dead
    window of the runs they apply to (marked auto where derived from the budget)."""

    def shown(name: str, applies, fmt: str) -> str:
        values = sorted({(getattr(r.cfg, name), name in r.cfg.auto) for r in runs if applies(r.cfg.variant)})
        return ", ".join(fmt.format(v) + (" (auto)" if auto else "") for v, auto in values)

    line = (
        f"{len(runs)} run(s): {base.steps:,} steps of {base.batch:,} tokens ({base.tokens:,}), lr {base.lr:g}"
    )
    if mult := shown("threshold_lr_mult", has_thresholds, "{:.3g}x"):
        line += f"; threshold lr {mult}"
    if window := shown("dead_window", resets_latents, "{:,} silent tokens"):
        line += f"; dead-latent reset after {window}"
    return line


def _train_runs(runs, base, store, reader, world, dev, autocast, quiet, wandb_project) -> list[Path]:
    """The one pass over the data that feeds every unfinished run of a sweep."""
    todo = [r for r in runs if not r.done]
    if not todo:
        return [r.dir for r in runs]
    loggers = _wandb_runs(wandb_project, todo) if wandb_project and world.main else {}
    if world.main and not quiet:
        console.print(plan(todo, base), highlight=False)
    stop = _StopFlag()
    feed = None if reader.widen else DeviceFeed(dev, reader.scale)  # CUDA: staged copies, widened there
    start = min(r.step for r in todo)
    total = base.steps * base.batch
    with stop, progress_bar(f"train {len(todo)} run(s)", total=total, quiet=quiet or not world.main) as bar:
        bar.advance(start * base.batch)
        step, stopping = start, False
        while step < base.steps and not stopping:
            epoch, offset = divmod(step, len(reader))
            batches = reader.epoch(epoch, start_batch=offset)
            for x in feed(batches) if feed else batches:
                x = x.to(dev, non_blocking=True)  # a no-op after DeviceFeed
                for r in todo:
                    if r.step == step:
                        result = r.train_step(x, autocast)
                        if r.step % base.log_every == 0 or r.step == base.steps:
                            row = r.log(x, result)
                            if loggers:
                                loggers[r.cfg.run_id].log(row, step=r.step)
                            if r is todo[0]:
                                bar.note(
                                    f"L0 {row['l0']:.1f}  R² {row['r2']:.3f}  dead {row['dead_frac']:.2f}"
                                )
                        result = None  # this step's f and x_hat are freed before the next run's step
                        r.snapshot(store.norm_factor)
                        if r.step % base.checkpoint_every == 0:
                            r.save_checkpoint()
                step += 1
                bar.advance(base.batch)
                # ranks agree on a stop at log steps only (a collective read back on the host); one
                # process stops at the next step
                if not world.active or step % base.log_every == 0 or step >= base.steps:
                    stopping = all_agree(stop.requested, world)
                if step >= base.steps or stopping:
                    break
        for r in todo:
            if r.step >= base.steps:
                r.finish(store.norm_factor)
            else:
                r.save_checkpoint()
    for logger in loggers.values():
        logger.finish()
    barrier(world)
    if stopping:
        raise SagsaeError(
            f"stopped by signal at step {step}: checkpoints saved; rerun the same command to resume"
        )
    return [r.dir for r in runs]


def _wandb_runs(project: str, runs: list[Run]) -> dict:
    """One wandb run per SAE run (resumed under the same id), when wandb is installed."""
    try:
        import wandb
    except ImportError:
        raise SagsaeError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    return {
        r.cfg.run_id: wandb.init(
            project=project,
            name=r.cfg.run_id,
            id=r.cfg.run_id,
            resume="allow",
            config=asdict(r.cfg),
            dir=str(r.dir),
            reinit="create_new",
        )  # fmt: skip
        for r in runs
    }


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and exits cleanly at the next step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
