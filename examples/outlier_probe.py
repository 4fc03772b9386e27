"""Does one large-norm token knock an SAE off its optimum? A controlled replay of a training run.

From a saved snapshot of a run (`<run>/checkpoints/tokens-N`), train on to ``--stop`` on exactly the
batches that run saw (the trainer's reader, same --data-seed and batch size; constant lr and the full
sparsity coefficient, as in the middle of a run; a fresh Adam, warmed up by the steps before the token),
twice: as the run did, and with every token whose norm exceeds ``--max-norm`` (normalised units)
removed from its batch. Prints held-out R² and L0 of both arms at each ``--at`` step. The arms differ
only in those tokens, so a gap between them is those tokens' doing. (Dead-latent resets and the
target-L0 controller are left out.)

    python examples/outlier_probe.py out/smol-conv/stores/resid_mid \\
        out/smol-conv/runs/resid_mid/sa-gsae-w576-l1_0.2-s0/checkpoints/tokens-0000001333376 \\
        --stop 12300 --at 12150,12156,12200,12300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sagsae_cli.files import snapshot_tokens
from sagsae_cli.metrics import R2
from sagsae_cli.reader import ShuffledBatches, sequential_batches
from sagsae_cli.run import apply_update, make_optimizer
from sagsae_cli.sae.base import load_sae
from sagsae_cli.store import open_store


def held_out(sae, store, rows: int) -> tuple[float, float]:
    """(R², L0) on the first ``rows`` held-out rows."""
    acc, active, n = R2(), 0.0, 0
    with torch.no_grad():
        for x in sequential_batches(store, "eval", 8192, max_rows=rows):
            x = x.float()
            out = sae(x)
            acc.update(x, out.x_hat)
            active += float((out.f != 0).sum())
            n += x.shape[0]
    return acc.value(), active / max(n, 1)


def batches(reader: ShuffledBatches, start: int, stop: int):
    """(global step, batch) for steps start..stop-1, as the trainer maps steps to epochs."""
    step = start
    while step < stop:
        epoch, offset = divmod(step, len(reader))
        for x in reader.epoch(epoch, start_batch=offset):
            yield step, x.float()
            step += 1
            if step >= stop:
                return


def replay(store, snapshot: Path, reader: ShuffledBatches, start: int, stop: int, at: set[int], a,
           max_norm: float | None) -> dict[int, tuple[float, float]]:  # fmt: skip
    sae, _ = load_sae(snapshot)
    opt = make_optimizer(sae, a.lr, a.threshold_lr_mult, (a.beta1, 0.999))
    out = {}
    for step, x in batches(reader, start, stop):
        if max_norm is not None:
            x = x[x.norm(dim=1) <= max_norm]
        if x.shape[0]:
            opt.zero_grad(set_to_none=False)
            sum(sae(x).losses.values()).backward()
            apply_update(sae, opt, 1.0)
        if step + 1 in at:
            out[step + 1] = held_out(sae, store, a.eval_rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("snapshot", type=Path, help="a run's checkpoints/tokens-N directory")
    ap.add_argument("--stop", type=int, required=True, help="the global step to replay to")
    ap.add_argument("--at", default="", help="steps to evaluate at (comma-separated); --stop always")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (the trainer's default 0)")
    ap.add_argument("--threshold-lr-mult", type=float, default=10.0,
                    help="the run's (threshold_lr_mult in its train_cfg.json; 10 in runs before auto)")  # fmt: skip
    ap.add_argument("--max-norm", type=float, default=3.0, help="the second arm drops tokens above this norm")
    ap.add_argument("--eval-rows", type=int, default=50_000)
    a = ap.parse_args()
    store = open_store(a.store)
    start = snapshot_tokens(a.snapshot) // a.batch
    at = {int(s) for s in a.at.split(",") if s} | {a.stop}
    reader = ShuffledBatches(store, a.batch, seed=a.data_seed, rank=None)
    big = [(step, round(float(x.norm(dim=1).max()), 2)) for step, x in batches(reader, start, a.stop)
           if x.shape[0] and float(x.norm(dim=1).max()) > a.max_norm]  # fmt: skip
    print(f"{a.snapshot}: steps {start}..{a.stop}, batches with a token above {a.max_norm}: {big}")
    arms = {
        "as trained": replay(store, a.snapshot, reader, start, a.stop, at, a, None),
        f"without norm > {a.max_norm}": replay(store, a.snapshot, reader, start, a.stop, at, a, a.max_norm),
    }
    print(f"{'step':>7s} " + " ".join(f"{k + ' R2':>26s} {'L0':>6s}" for k in arms))
    for step in sorted(at):
        print(f"{step:7d} " + " ".join(f"{arms[k][step][0]:26.4f} {arms[k][step][1]:6.2f}" for k in arms))


if __name__ == "__main__":
    main()
