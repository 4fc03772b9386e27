"""torch.distributed plumbing for `torchrun --nproc-per-node K -m sagsae_cli ...`.

Without torchrun's environment (RANK, WORLD_SIZE) everything here is a no-op and the world is one
process. With it: gloo on CPU, nccl on CUDA, one process per device.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sagsae_cli.errors import PeerError, SagsaeError
from sagsae_cli.progress import console, styled


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return World(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":  # bound to this rank's GPU: barriers and collectives know their device
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        atexit.register(_close)
    return World(dist.get_rank(), dist.get_world_size(), device)


def _close() -> None:
    """Tear the process group down while the interpreter is still whole (for library callers; the
    CLI leaves through :func:`leave`)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> None:
    """Exit the process with ``code``. Inside a process group this flushes and ends the process at
    once (``os._exit``), skipping interpreter finalisation: gloo's worker threads release the
    tensors of a finished collective themselves, which needs the GIL, and a worker that asks for it
    while the interpreter finalises is ended by ``pthread_exit`` inside a noexcept C++ frame, so the
    whole process aborts ("terminate called without an active exception", SIGABRT) after the command
    succeeded. Seen ~1 run in 20 with a gather as a rank's last collective; a core dump shows
    ``~AsyncGatherWork`` -> ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit`` -> terminate.
    Everything the command wrote is committed and closed before this is reached."""
    if not dist.is_initialized():
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def pick_device(name: str) -> torch.device:
    """auto -> cuda (this process's local rank) when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SagsaeError("--device cuda but no CUDA device is visible: use --device cpu or auto")
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SagsaeError(
            f"--device {name!r} is not a device: use auto, cpu or cuda (cuda:N for one GPU)"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise SagsaeError(f"--device {name!r} is not supported: use auto, cpu or cuda (cuda:N for one GPU)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SagsaeError(f"--device {name} but no CUDA device is visible: use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SagsaeError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible (cuda:0 ...)"
            )
        torch.cuda.set_device(dev)  # kernels and allocations without an explicit device go there too
    return dev


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def all_agree(flag: bool, world: World) -> bool:
    """True on every rank if any rank says True (e.g. a stop signal)."""
    if not world.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(value, world: World):
    """Rank 0's ``value`` on every rank. If it is a SagsaeError, every rank raises: rank 0 the error
    itself, the others a PeerError (not printed by the CLI) once rank 0 has exited, so torchrun
    names rank 0 as the root cause and no rank is left failing inside a collective."""
    if world.active:
        box = [value]
        dist.broadcast_object_list(box, src=0, device=world.device)
        value = box[0]
    if isinstance(value, SagsaeError):
        if world.main:
            raise value
        try:  # rank 0 never joins: this returns when it has printed its error and quit
            dist.barrier()
        except Exception:
            pass
        raise PeerError(str(value))
    return value


def on_main(fn, world: World):
    """``fn()`` on rank 0 only (None on the others); a SagsaeError there is raised on every rank."""
    value = None
    if world.main:
        try:
            value = fn()
        except SagsaeError as e:
            value = e
    return from_main(value, world)


# --- other processes on this machine's cores (CPU runs) --------------------------------------------
def contention_warning(threads: int, cores: int, busy: float) -> str | None:
    """The warning for a CPU command (train, harvest) whose ``threads`` will wait on cores that other
    processes keep busy (``busy``: how many of its ``cores`` they kept busy just before it starts), or
    None when they fit. A torch parallel region waits for its slowest thread, so one descheduled thread
    stalls them all: up to 10x slower here (README)."""
    if threads <= 1 or busy + threads <= cores + 0.5:
        return None
    return (
        f"warning: other processes keep {busy:.1f} of this run's {cores} core(s) busy and "
        f"torch will use {threads} threads: threads that wait on busy cores can make this command several "
        "times slower; run jobs side by side with OMP_NUM_THREADS=1 (or fewer threads each, their sum within the cores)"
    )


def _busy_cores(interval: float = 0.25) -> tuple[float, int] | None:
    """(how many of the cores this process may use were busy over the next ``interval`` seconds, while it
    sleeps, and how many it may use), from /proc/stat; None where that cannot be read. Sampled now, not
    the load average, which still counts the previous command of a script for a minute."""
    import time

    try:
        allowed = os.sched_getaffinity(0)

        def sample() -> dict[str, tuple[int, int]]:
            out = {}
            with open("/proc/stat") as f:
                for line in f:
                    name, *ticks = line.split()
                    if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in allowed:
                        t = [int(v) for v in ticks[:8]]
                        out[name] = (sum(t), t[3] + t[4])  # all ticks, idle + iowait
            return out

        before = sample()
        time.sleep(interval)
        after = sample()
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu in before.keys() & after.keys():
        total = after[cpu][0] - before[cpu][0]
        if total > 0:
            busy += 1.0 - (after[cpu][1] - before[cpu][1]) / total
    return (busy, len(allowed)) if before else None


def machine_contention() -> str | None:
    """contention_warning for this process and machine (None where the cores' use is unknown)."""
    threads = torch.get_num_threads()
    sampled = _busy_cores() if threads > 1 else None
    return contention_warning(threads, sampled[1], sampled[0]) if sampled else None


def warn_of_busy_cores(device: torch.device, world: World, quiet: bool) -> None:
    """Print ``machine_contention``'s warning before a CPU command's torch work starts (rank 0, not
    quiet): train's steps and harvest's forwards both wait on busy cores."""
    if device.type == "cpu" and world.main and not quiet:
        crowded = machine_contention()
        if crowded:
            console.print(styled("yellow", "warning", crowded.removeprefix("warning")), highlight=False)
