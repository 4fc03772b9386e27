"""Latent churn: which latents fall silent and come back between a run's snapshots.

A run's training log counts a latent dead only after the dead window (`--dead-window`) without firing,
and the resets revive it then, so the log can read 0% dead while latents keep dying and being reset.
This probe evaluates every snapshot of a run (`--snapshots`, saved under `<run>/checkpoints/tokens-N`)
and its final SAE on the same held-out rows and prints, per snapshot: the latents silent on those
rows, how many fell silent and how many fired again since the snapshot before, and (for SAEs with a
learned threshold θ: sa-gsae, one-sided, jumprelu) the median θ of silent and of firing latents with
the silent latents' median of max gate input / θ (|π| for the two-sided gate; under 1: θ sits above
everything the latent sees). Last, of the latents silent at the end, how many still fired at each snapshot.

    python examples/latent_churn.py out/smol-abl/runs/resid_mid/sa-gsae-w576-l1_0.2-s0 \\
        out/smol-abl/runs/resid_mid/one-sided-w576-l1_0.2-s0 --eval-tokens 50000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sagsae_cli.evaluate import snapshots_on_held_out
from sagsae_cli.files import snapshot_tokens


def firing_and_threshold(sae, x: torch.Tensor):
    """(fires: bool per latent, theta or None, max |gate input| / theta or None) on the rows ``x``."""
    with torch.no_grad():
        fires = (sae.encode(x) != 0).any(0)
        if not hasattr(sae, "log_threshold"):
            return fires, None, None
        theta = sae.log_threshold.exp()
        gate_in = sae.pre(x) + sae.b_gate if hasattr(sae, "b_gate") else sae.pre(x)
        two_sided = sae.cfg.architecture == "sa-gsae" and not sae.cfg.one_sided  # |pi| > theta opens
        return fires, theta, (gate_in.abs() if two_sided else gate_in).max(0).values / theta


def churn(run: Path, eval_tokens: int) -> list[dict]:
    out = []
    for snap, sae, _, rows in snapshots_on_held_out(run, eval_tokens):
        fires, theta, margin = firing_and_threshold(sae, rows)
        r = {"snapshot": snap, "fires": fires, "silent": int((~fires).sum())}
        if out:
            before = out[-1]["fires"]
            r["died"], r["revived"] = int((before & ~fires).sum()), int((~before & fires).sum())
        if theta is not None:
            r["theta_live"] = float(theta[fires].median()) if fires.any() else float("nan")
            r["theta_silent"] = float(theta[~fires].median()) if (~fires).any() else float("nan")
            r["margin_silent"] = float(margin[~fires].median()) if (~fires).any() else float("nan")
        out.append(r)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (with snapshots)")
    ap.add_argument("--eval-tokens", type=int, default=50_000, help="held-out rows to fire on")
    a = ap.parse_args(argv)
    for run in a.runs:
        rows = churn(run, a.eval_tokens)
        width = len(rows[-1]["fires"])
        print(f"{run.name} (width {width})")
        print(
            f"{'tokens':>12} {'silent':>6} {'died':>5} {'back':>5} {'θ live':>8} {'θ silent':>8} {'max|π|/θ':>8}"
        )
        for r in rows:
            tokens = "final" if r["snapshot"] == run else f"{snapshot_tokens(r['snapshot']):,}"
            died = f"{r['died']:5d} {r['revived']:5d}" if "died" in r else f"{'':5} {'':5}"
            th = (f" {r['theta_live']:8.3g} {r['theta_silent']:8.3g} {r['margin_silent']:8.2f}"
                  if "theta_live" in r else "")  # fmt: skip
            print(f"{tokens:>12} {r['silent']:6d} {died}{th}")
        end_silent = ~rows[-1]["fires"]
        was = [int((r["fires"] & end_silent).sum()) for r in rows[:-1]]
        print(f"of the {int(end_silent.sum())} latents silent at the end, firing at each snapshot: {was}")


if __name__ == "__main__":
    main()
