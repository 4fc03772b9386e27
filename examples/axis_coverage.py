"""Axis coverage: how a run's dictionary covers a synthetic store's ground-truth axes, per snapshot.

For every snapshot of a run (`--snapshots`, under `<run>/checkpoints/tokens-N`) and its final SAE, on
the same held-out rows: the axes a live latent lies within |cos| 0.9 of (paired axes apart: covering
one takes a latent that fires on both signs, or two non-negative ones), the axes none does, and the
live latents that cover none, split into *merged* (within 0.7 of two axes at once: one latent sitting
between two axes) and *stray*. `metrics.axis_coverage` is the pure function. It shows where a run's
later tokens go when held-out R² still creeps up (docs/METHOD.md §8).

    python examples/axis_coverage.py out/convergence/b256-thr3/runs/sa-gsae-w64-l1_0.4-s0 --eval-tokens 20000
    python examples/axis_coverage.py RUN... --plot docs/figures   # also axis_coverage.png/.pdf there
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sagsae_cli.errors import SagsaeError
from sagsae_cli.evaluate import run_store, snapshots_on_held_out
from sagsae_cli.files import train_cfg as read_train_cfg
from sagsae_cli.metrics import axis_coverage


def coverage(run: Path, eval_tokens: int) -> list[dict]:
    store = run_store(run)
    truth = store.truth()
    if truth is None:
        raise SagsaeError(f"{run}'s store has no ground truth: axis coverage needs a synthetic store")
    axes, paired = torch.from_numpy(truth["axes"]), torch.from_numpy(truth["paired"]).bool()
    out = []
    for _, sae, tokens, rows in snapshots_on_held_out(run, eval_tokens, store):
        with torch.no_grad():
            live = (sae.encode(rows) != 0).any(0)
        label = "final" if tokens is None else f"{tokens:,}"
        at = read_train_cfg(run)["tokens"] if tokens is None else tokens
        out.append({"tokens": label, "at": at, **axis_coverage(sae.W_dec.detach(), axes, live, paired)})
    out[-1]["n_axes"], out[-1]["n_paired"] = len(paired), int(paired.sum())
    return out


def plot(runs: list[Path], tables: list[list[dict]], out: Path) -> list[Path]:
    """Covered axes against tokens, one line (and colour) per run."""
    from sagsae_cli.plots import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (run, rows) in enumerate(zip(runs, tables)):
        ax.plot([r["at"] / 1e6 for r in rows], [r["covered"] for r in rows], marker="o", ms=3,
                ls=["-", "--"][i // 10 % 2], color=plt.cm.tab10(i % 10), label=f"{run.parent.parent.name}/{run.name}")  # fmt: skip
    n = tables[0][-1]["n_axes"]
    ax.axhline(n, color="#999999", lw=0.8, ls=":")
    ax.set(xlabel="tokens trained (M)", ylabel=f"axes covered (of {n}, |cos| >= 0.9)", ylim=(0, n + 2))
    ax.legend(fontsize=7)
    return _save(fig, out, "axis_coverage")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories trained on a synthetic store")
    ap.add_argument("--eval-tokens", type=int, default=20_000, help="held-out rows a live latent fires on")
    ap.add_argument(
        "--plot", type=Path, help="also write axis_coverage.png/.pdf (covered axes by tokens) here"
    )
    a = ap.parse_args(argv)
    try:
        tables = []
        for run in a.runs:
            rows = coverage(run, a.eval_tokens)
            tables.append(rows)
            print(f"{run.name}: {rows[-1]['n_axes']} axes, {rows[-1]['n_paired']} of them paired")
            print(
                f"{'tokens':>12} {'covered':>7} {'paired':>6} {'missing':>7} {'merged':>6} {'stray':>5} {'dead':>4}"
            )
            for r in rows:
                print(f"{r['tokens']:>12} {r['covered']:7d} {r['paired_covered']:6d} {r['uncovered']:7d} "
                      f"{r['merged']:6d} {r['stray']:5d} {r['dead']:4d}")  # fmt: skip
        if a.plot:
            print("wrote", *plot(a.runs, tables, a.plot))
    except SagsaeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
