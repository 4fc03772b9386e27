"""Trainer throughput, measured side by side in one run (d=576 activations, fp32, CPU by default).

    python benchmarks/train_bench.py [--width 4608] [--batch 4096] [--steps 4]
        [--saelens-python /path/to/venv-with-sae-lens/bin/python]

Prints tokens/s of (1) one SA-GSAE run through `train()` (reader, schedules, resets, logging
included), (2) a 4-coefficient sweep in one pass against 4 separate runs, and (3), when a Python
with sae-lens is given, our Gated SAE training step against SAELens's GatedTrainingSAE on the same
activations, width, batch and dtype (ratio > 1 means ours is faster): SAELens as shipped, and SAELens
with the allocator setting `sagsae` makes at start (``sagsae_cli.allocator``), so the ratio shows
what the code and what the allocator contribute. Our step is timed before and after SAELens's (the
best of both counts), as the two cannot take turns in one process.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time

import torch
from _timing import best_time, sae_step_fn

from sagsae_cli.allocator import REUSE_SETTINGS, reuse_large_blocks
from sagsae_cli.recipe import TrainConfig
from sagsae_cli.store import StoreWriter
from sagsae_cli.train import train

SAELENS_STEP = r"""
import ctypes, sys, time, torch
for k, v in {keep}:  # sagsae_cli.allocator's setting (or none), made without importing sagsae
    ctypes.CDLL("libc.so.6").mallopt(k, v)
from sae_lens import GatedTrainingSAE, GatedTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
torch.set_num_threads({threads})
cfg = GatedTrainingSAEConfig(d_in={d}, d_sae={width}, l1_coefficient=0.4, dtype="float32", device="cpu")
sae = GatedTrainingSAE(cfg)
opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.0, 0.999))
x = torch.randn({batch}, {d})
def step():
    opt.zero_grad(set_to_none=True)
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={{"l1": 0.4}}, dead_neuron_mask=None,
                                                   n_training_steps=0, is_logging_step=False))
    out.loss.backward()  # SAELens 6 keeps no decoder-norm constraint in the step (norms enter the loss)
    opt.step()
step()
best = min((lambda t: (step(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range({repeats}))
print(best)
"""


def our_gated_step(d: int, width: int, batch: int, repeats: int) -> float:
    return best_time(sae_step_fn("gated", d, width, batch), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--saelens-python", default=None)
    a = ap.parse_args()
    reuse_large_blocks()  # as `sagsae` does
    tokens = a.steps * a.batch
    with tempfile.TemporaryDirectory() as tmp:
        with StoreWriter(f"{tmp}/s", d=a.d, dtype="float32", config={"bench": 1}) as w:
            w.append("train", torch.randn(tokens, a.d))
            w.commit(complete=True)
        base = TrainConfig(width=a.width, batch=a.batch, tokens=tokens, store=f"{tmp}/s", log_every=a.steps,
                           checkpoint_every=10**9)  # fmt: skip
        coefs = [0.1, 0.2, 0.4, 0.8]

        def run(cfgs, name):
            t = time.perf_counter()
            train(cfgs, f"{tmp}/{name}", quiet=True, force=True)
            return time.perf_counter() - t

        one = run([base], "one")
        sweep = run([TrainConfig(**{**base.__dict__, "l1": c}) for c in coefs], "sweep")
        separate = sum(run([TrainConfig(**{**base.__dict__, "l1": c})], f"sep{c}") for c in coefs)
    print(
        f"d={a.d} width={a.width} batch={a.batch} fp32, {torch.get_num_threads()} threads, {a.steps} steps per run"
    )
    print(f"one SA-GSAE run (train())       {tokens / one:9,.0f} tok/s")
    print(f"4-coefficient sweep, one pass   {4 * tokens / sweep:9,.0f} run-tok/s")
    print(
        f"4 separate runs                 {4 * tokens / separate:9,.0f} run-tok/s  (sweep speed-up {separate / sweep:.2f}x)"
    )
    ours = our_gated_step(a.d, a.width, a.batch, a.repeats)
    print(f"our Gated SAE step              {a.batch / ours:9,.0f} tok/s")
    if a.saelens_python:
        theirs = {}
        for reuse, label in ((False, "as shipped"), (True, "freed blocks reused")):
            code = SAELENS_STEP.format(d=a.d, width=a.width, batch=a.batch, repeats=a.repeats,
                                       threads=torch.get_num_threads(), keep=list(REUSE_SETTINGS.items()) if reuse else [])  # fmt: skip
            p = subprocess.run([a.saelens_python, "-c", code], capture_output=True, text=True)
            if p.returncode:
                print("SAELens step failed:", p.stderr.strip().splitlines()[-1:])
                return
            theirs[label] = float(p.stdout.strip().splitlines()[-1])
        ours = min(ours, our_gated_step(a.d, a.width, a.batch, a.repeats))
        print(f"our Gated SAE step, best of both {a.batch / ours:8,.0f} tok/s")
        for label, t in theirs.items():
            print(
                f"SAELens GatedTrainingSAE step, {label:20s} {a.batch / t:9,.0f} tok/s  (ours / SAELens = {t / ours:.2f}x)"
            )


if __name__ == "__main__":
    main()
