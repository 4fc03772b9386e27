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

from sagsae_cli.probes import OpCounter, SyncProbe
from sagsae_cli.recipe import TrainConfig
from sagsae_cli.run import Run
from sagsae_cli.store import open_store


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
    _probe_steps(store, tmp_path, variant, extra, OneProcess())


@pytest.fixture
def gloo_world():
    """The torchrun path in this process: a gloo group of one, under a World that says it has two ranks,
    so the trainer takes its distributed branch (gradients, losses and fired flags all-reduced)."""
    import torch.distributed as dist

    from sagsae_cli.distributed import World

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield World(rank=0, size=2)
    finally:
        dist.destroy_process_group()


TORCHRUN = [("sa-gsae", {}), ("gated", {}), ("topk", {"k": 4}), ("sa-gsae", {"target_l0": 4.0})]


@pytest.mark.parametrize(
    "variant, extra", TORCHRUN, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values()))
)
def test_a_torchrun_training_step_makes_no_host_sync(store, tmp_path, gloo_world, variant, extra):
    _probe_steps(store, tmp_path, variant, extra, gloo_world)


def _probe_steps(store, tmp_path, variant, extra, world):
    # a dead window of one batch so that resets happen inside the probed steps
    cfg = TrainConfig(store=str(store), variant=variant, width=24, tokens=20_000, batch=200, lr=1e-3,
                      dead_window=200, l1_warmup_frac=0.0, warmup_steps=1, **extra)  # fmt: skip
    s = open_store(store)
    sample = s.read("train", 0, 2000, normalise=True)
    run = Run(cfg, s.d, Path(tmp_path), sample, world, force=False)
    batches = [s.read("train", i * 200, (i + 1) * 200, normalise=True) for i in range(6)]
    run.train_step(batches[0], torch.autocast("cpu", enabled=False))  # first-step set-up (optimiser state)
    probe = SyncProbe()
    with probe:
        for x in batches[1:]:
            run.train_step(x, torch.autocast("cpu", enabled=False))
    assert run.step == 6
    assert probe.seen == [], sorted(set(probe.seen))
    run.check_finite()  # and the values are still there to read at a log step


def test_quantile_resets_sort_the_batch_only_every_sixteenth_of_the_dead_window(store, tmp_path):
    """--reset-mode quantile sorts batch x width |u| for its opening thresholds: on 1 step in
    dead window / batch / 16, not on every step (a window of 32 batches: every 2nd step)."""
    from sagsae_cli.recipe import QUANTILE_CHECKS

    cfg = TrainConfig(store=str(store), variant="sa-gsae", width=24, tokens=20_000, batch=200, lr=1e-3,
                      dead_window=200 * 2 * QUANTILE_CHECKS, reset_mode="quantile", l1_warmup_frac=0.0,
                      warmup_steps=1)  # fmt: skip
    assert cfg.reset_every == 2
    s = open_store(store)
    run = Run(cfg, s.d, Path(tmp_path), s.read("train", 0, 2000, normalise=True), OneProcess(), force=False)
    counter = OpCounter("aten.sort")
    with counter:
        for i in range(8):
            run.train_step(
                s.read("train", i * 200, (i + 1) * 200, normalise=True), torch.autocast("cpu", enabled=False)
            )
    assert counter.calls == 4
    threshold = TrainConfig(store=str(store), dead_window=200 * 2 * QUANTILE_CHECKS, batch=200)
    assert threshold.reset_every == 1  # the other modes reset every step, as before
