"""No host sync in a training step (docs/ARCHITECTURE.md, "No host sync per step"): on CUDA each of these
operations makes the host wait for the device, so a step that calls one cannot run ahead of the GPU. The
step is run on CPU under a TorchDispatchMode that records every such operation: reading a value back
(``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``), ``nonzero`` (its
output size depends on the data), indexing with a boolean mask, and ``masked_fill`` with a tensor value
(``aten.masked_fill.Tensor`` reads the value back). Log steps read values back on purpose and are not
run here. Also: no tensor is created inside the step without a device (it would land on the CPU and
be copied, a sync of its own)."""

from pathlib import Path

import pytest
import torch
from conftest import OneProcess, run_cli
from torch.utils._python_dispatch import TorchDispatchMode

from sagsae_cli.store import open_store
from sagsae_cli.train import Run, TrainConfig

SYNCS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_fill.Tensor",
         "aten.masked_fill_.Tensor", "aten.item.default"}  # fmt: skip
FACTORIES = {"aten.empty.memory_format", "aten.zeros.default", "aten.ones.default", "aten.full.default",
             "aten.scalar_tensor.default", "aten.arange.default", "aten.arange.start", "aten.randn.default",
             "aten.rand.default", "aten.empty_strided.default"}  # fmt: skip


class SyncProbe(TorchDispatchMode):
    """Records the sync-type operations (and factory calls without a device) dispatched inside it."""

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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sync") / "s"
    run_cli("harvest", "--source", "synthetic", "--d", 16, "--n-axes", 12, "--tokens", "20k", "--eval-tokens", "2k",
            "--out", path, "--quiet", check=0)  # fmt: skip
    return path


CASES = [
    ("sa-gsae", {}), ("sa-gsae-untied", {}), ("no-aux", {}), ("one-sided", {}), ("no-reset", {}),
    ("sa-gsae-split", {}), ("gated", {}), ("relu", {}), ("topk", {"k": 4}), ("jumprelu", {}),
    ("sa-gsae", {"reset_mode": "residual"}), ("sa-gsae", {"reset_mode": "quantile"}),
    ("sa-gsae", {"target_l0": 4.0}), ("gated", {"target_l0": 4.0}),
]  # fmt: skip


@pytest.mark.parametrize(
    "variant, extra", CASES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values()))
)
def test_a_training_step_makes_no_host_sync(store, tmp_path, variant, extra):
    # a dead window of one batch so that resets happen inside the probed steps
    cfg = TrainConfig(store=str(store), variant=variant, width=24, tokens=20_000, batch=200, lr=1e-3,
                      dead_window=200, l1_warmup_frac=0.0, warmup_steps=1, **extra)  # fmt: skip
    s = open_store(store)
    sample = s.read("train", 0, 2000, normalise=True)
    run = Run(cfg, s.d, Path(tmp_path), sample, OneProcess(), force=False)
    batches = [s.read("train", i * 200, (i + 1) * 200, normalise=True) for i in range(6)]
    run.train_step(batches[0], torch.autocast("cpu", enabled=False))  # first-step set-up (optimiser state)
    probe = SyncProbe()
    with probe:
        for x in batches[1:]:
            run.train_step(x, torch.autocast("cpu", enabled=False))
    assert run.step == 6
    assert probe.seen == [], sorted(set(probe.seen))
    run.check_finite()  # and the values are still there to read at a log step
