"""Dispatch-level probes of a training step, for the tests, the benchmarks and `benchmarks/gpu_smoke.sh`:
which operations would make a CUDA host wait (``SyncProbe``), how often one operation runs
(``OpCounter``) and how many bytes the tensors made inside a block hold at their peak (``LiveBytes``).
Each is a ``TorchDispatchMode``: it sees every ATen operation on any device, so a CPU run already shows
what a GPU run would do."""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# each of these makes the host wait for the device on CUDA: a value read back (.item(), float(t), int(t),
# bool(t)), nonzero (its size depends on the data), and masked_fill with a tensor value (read back)
SYNCS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_fill.Tensor",
         "aten.masked_fill_.Tensor", "aten.item.default"}  # fmt: skip
# factories that land on the CPU when no device is given (a copy to the GPU, a sync of its own)
FACTORIES = {"aten.empty.memory_format", "aten.zeros.default", "aten.ones.default", "aten.full.default",
             "aten.scalar_tensor.default", "aten.arange.default", "aten.arange.start", "aten.randn.default",
             "aten.rand.default", "aten.empty_strided.default"}  # fmt: skip


class SyncProbe(TorchDispatchMode):
    """Records the sync-type operations (and factory calls without a device) dispatched inside it;
    boolean-mask indexing counts too (its output size depends on the data)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in SYNCS:
            self.seen.append(name)
        elif name.startswith("aten.index.Tensor") or name.startswith("aten.index_put"):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                self.seen.append(name + " (boolean mask)")
        elif name in FACTORIES and kwargs.get("device") is None:
            self.seen.append(name + " (no device)")
        return func(*args, **kwargs)


class OpCounter(TorchDispatchMode):
    """Counts the calls of the operations whose name starts with ``op`` (e.g. ``aten.sort``)."""

    def __init__(self, op: str):
        super().__init__()
        self.op, self.calls = op, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += str(func).startswith(self.op)
        return func(*args, **(kwargs or {}))


class LiveBytes(TorchDispatchMode):
    """The bytes held by the storages that operations inside it create, now and at their peak. A storage
    is counted when an operation returns it and uncounted when it is freed (a weak reference: torch keeps
    one Python object per storage), so tensors autograd saves for the backward count while they live.
    Storages made before the block (parameters, optimiser state) are not counted."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._seen:
                continue
            self._seen.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._free, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def bare_step(sae, opt, x: torch.Tensor, cast=None, coef: float | None = None):
    """One training step as the trainer takes it, without the trainer around it: zero the gradients,
    forward under ``cast`` (an autocast context, or none), the summed losses (float32) backward, then
    ``run.apply_update`` (decoder constraint, gradient clip, Adam). Returns a callable that takes the
    step on ``x`` and returns its loss; the tests' memory probe and the benchmarks all time this one."""
    from sagsae_cli.run import apply_update

    kwargs = {} if coef is None else {"coef": coef}

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        with cast if cast is not None else nullcontext():
            out = sae(x, **kwargs)
        loss = sum(v.float() for v in out.losses.values())
        loss.backward()
        apply_update(sae, opt, 1.0)
        return loss

    return step


def step_peak_bytes(variant: str, d: int, width: int, batch: int, dtype: str = "bf16", device="cpu") -> float:
    """Peak bytes per batch x width element that one ``bare_step`` allocates, under bf16 autocast or in
    fp32: measured by ``LiveBytes`` on the second step (the first makes the optimiser's state)."""
    from sagsae_cli.run import make_optimizer
    from sagsae_cli.sae import SAEConfig, build_sae

    dev = torch.device(device)
    sae = build_sae(variant, SAEConfig(architecture="", d_in=d, d_sae=width, l1=0.1, k=max(1, width // 16)))
    sae.to(dev)
    opt = make_optimizer(sae, 1e-3, 3.0)
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(0)).to(dev)
    cast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else None
    step = bare_step(sae, opt, x, cast, coef=0.1)
    step()
    probe = LiveBytes()
    with probe:
        step()
    return probe.peak / (batch * width)
