#!/usr/bin/env bash
# Convergence study (issue: SA-GSAE needs more optimizer steps than the Gated SAE): one change at a
# time against a baseline recipe, on a synthetic store with superposition (64 axes in d=32, a quarter
# of them antipodal pairs, L0 3) and optionally SmolLM2 mlp_out. Each candidate trains SA-GSAE at H
# and the Gated SAE at 2H over three coefficients with 16 snapshots and a constant lr after warm-up
# (--lr-decay 0, so the curve shows the optimiser, not the schedule), then `eval --checkpoints` and
# `compare` give tokens-to-converge per run and the worst gap per snapshot. Rerunnable (resumes).
#   CANDIDATES="base batch256" TOKENS=4M bash examples/convergence_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/convergence}
TOKENS=${TOKENS:-4M}
CANDIDATES=${CANDIDATES:-base batch256 batch128 lr5e-3 initl0 beta09 l1warm0 l1warm20 thr50 theta01 b256-s1 b256-thr50 b256-thr1 b256-thr3 b256-theta01 b256-l1warm0 b256-noreset b256-split b256-decdata b256-decdata-s1 b256-widths b256-noaux b256-aux05 b256-aux2 b256-aux2-l1x2 b256-onesided b256-thr3-s1 b256-onesided-s1 b256-resid b256-resid-s1 b256-resid-dw50k b256-dw50k b256-dw50k-s1 b256-auto b256-auto-s1 b256-auto-s2 b256-auto-s3 b256-auto-lr4e-3 b256-auto-lr4e-3-s1 b256-auto-lr3e-3 b256-auto-decay b256-auto-lr4e-3-decay b256-auto-quantile b256-auto-quantile-s1 b256-auto-beta09 b256-auto-beta09-s1 b256-auto-widths b256-auto-widths-s1 b256-auto-noreset-widths b256-auto-noreset-widths-s1}
# shellcheck source=examples/_setup.sh
. examples/_setup.sh

STORE="$OUT/store-superposition"
sagsae harvest --source synthetic --protocol B --d 32 --n-axes 64 --paired-fraction 0.25 --l0 3 \
  --tokens 4000000 --eval-tokens 50000 --out "$STORE" --quiet > /dev/null

flags() {  # candidate -> training flags (the baseline: batch 1024, lr 2e-3, the default recipe's other settings)
  case "$1" in
    base) echo "--batch 1024 --lr 2e-3" ;;
    batch256) echo "--batch 256 --lr 2e-3" ;;
    batch128) echo "--batch 128 --lr 2e-3" ;;  # the smallest batch --batch auto picks
    lr5e-3) echo "--batch 1024 --lr 5e-3" ;;
    initl0) echo "--batch 1024 --lr 2e-3 --init-l0 3" ;;
    beta09) echo "--batch 1024 --lr 2e-3 --adam-beta1 0.9" ;;
    l1warm0) echo "--batch 1024 --lr 2e-3 --l1-warmup 0" ;;
    l1warm20) echo "--batch 1024 --lr 2e-3 --l1-warmup 0.2" ;;
    thr50) echo "--batch 1024 --lr 2e-3 --threshold-lr-mult 50" ;;
    theta01) echo "--batch 1024 --lr 2e-3 --theta0 0.1" ;;
    # the same changes on top of batch 256 (what --batch auto picks for this budget), and its 2nd seed
    b256-s1) echo "--batch 256 --lr 2e-3 --seeds 1" ;;
    b256-thr50) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 50" ;;
    b256-thr1) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 1" ;;  # log theta at the base lr
    b256-thr3) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3" ;;
    b256-theta01) echo "--batch 256 --lr 2e-3 --theta0 0.1" ;;
    b256-l1warm0) echo "--batch 256 --lr 2e-3 --l1-warmup 0" ;;
    b256-noreset) echo "--batch 256 --lr 2e-3" ;;  # SA-GSAE without dead-latent resets (sa_variant)
    b256-split) echo "--batch 256 --lr 2e-3" ;;  # SA-GSAE with per-sign thresholds (sa_variant)
    b256-noaux) echo "--batch 256 --lr 2e-3" ;;  # SA-GSAE without the auxiliary term, alpha = 0 (sa_variant)
    b256-aux05) echo "--batch 256 --lr 2e-3 --aux-coef 0.5" ;;  # alpha (both architectures)
    b256-aux2) echo "--batch 256 --lr 2e-3 --aux-coef 2" ;;
    b256-aux2-l1x2) echo "--batch 256 --lr 2e-3 --aux-coef 2" ;;  # and twice the coefficients (l1s)
    b256-decdata) echo "--batch 256 --lr 2e-3 --init-decoder data" ;;
    b256-decdata-s1) echo "--batch 256 --lr 2e-3 --init-decoder data --seeds 1" ;;
    b256-widths) echo "--batch 256 --lr 2e-3" ;;  # both architectures at H and 2H (sa_widths, gated_widths)
    b256-onesided) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3" ;;  # the one-sided gate at H (sa_variant), as b256-thr3
    b256-thr3-s1) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --seeds 1" ;;
    b256-onesided-s1) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --seeds 1" ;;
    b256-resid) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --reset-mode residual" ;;  # resets point latents at the worst-reconstructed tokens
    b256-resid-s1) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --reset-mode residual --seeds 1" ;;
    b256-resid-dw50k) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --reset-mode residual --dead-window 50k" ;;  # and near-silent latents count as dead
    b256-dw50k) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --dead-window 50k" ;;  # the short window alone
    b256-dw50k-s1) echo "--batch 256 --lr 2e-3 --threshold-lr-mult 3 --dead-window 50k --seeds 1" ;;
    b256-auto) echo "--batch 256 --lr 2e-3 --dead-window 0" ;;  # today's defaults for 4M tokens (3.2x, a 50k window)
    b256-auto-s1) echo "--batch 256 --lr 2e-3 --dead-window 0 --seeds 1" ;;
    b256-auto-s2) echo "--batch 256 --lr 2e-3 --dead-window 0 --seeds 2" ;;
    b256-auto-s3) echo "--batch 256 --lr 2e-3 --dead-window 0 --seeds 3" ;;
    # twice the base lr (the threshold multiple, auto, halves: log theta's own rate stays 6.4e-3)
    b256-auto-lr4e-3) echo "--batch 256 --lr 4e-3 --dead-window 0" ;;
    b256-auto-lr4e-3-s1) echo "--batch 256 --lr 4e-3 --dead-window 0 --seeds 1" ;;
    b256-auto-lr3e-3) echo "--batch 256 --lr 3e-3 --dead-window 0" ;;
    # the final 20% of the run decayed (the default schedule; the last --lr-decay on the line wins): the
    # converged comparison at each lr, not a convergence curve
    b256-auto-decay) echo "--batch 256 --lr 2e-3 --dead-window 0 --lr-decay 0.2" ;;
    b256-auto-lr4e-3-decay) echo "--batch 256 --lr 4e-3 --dead-window 0 --lr-decay 0.2" ;;
    # a reset latent keeps its direction and reopens on its best tokens at the average firing count
    b256-auto-quantile) echo "--batch 256 --lr 2e-3 --dead-window 0 --reset-mode quantile" ;;
    b256-auto-quantile-s1) echo "--batch 256 --lr 2e-3 --dead-window 0 --reset-mode quantile --seeds 1" ;;
    # momentum at today's defaults (both architectures; measured before only at batch 1,024)
    b256-auto-beta09) echo "--batch 256 --lr 2e-3 --dead-window 0 --adam-beta1 0.9" ;;
    b256-auto-beta09-s1) echo "--batch 256 --lr 2e-3 --dead-window 0 --adam-beta1 0.9 --seeds 1" ;;
    # both architectures at H and 2H at today's defaults (sa_widths, gated_widths): is the Gated SAE's
    # objective settling sooner a matter of its spare latents?
    b256-auto-widths) echo "--batch 256 --lr 2e-3 --dead-window 0" ;;
    b256-auto-widths-s1) echo "--batch 256 --lr 2e-3 --dead-window 0 --seeds 1" ;;
    # the same without dead-latent resets on the SA side (sa_variant no-reset): what slows SA-GSAE@2H?
    b256-auto-noreset-widths) echo "--batch 256 --lr 2e-3 --dead-window 0" ;;
    b256-auto-noreset-widths-s1) echo "--batch 256 --lr 2e-3 --dead-window 0 --seeds 1" ;;
    *) "$1"_flags ;;
  esac
}

# the tables of docs/METHOD.md §8 were measured with the dead window of their day, 10% of the run: kept
# (so reruns reproduce them and resume their runs) unless a candidate sets its own
OLD_WINDOW=$(python -c "from sagsae_cli.cli import _tokens; print(_tokens('$TOKENS') // 10)")
dead() {
  case "$(flags "$1")" in
    *--dead-window*) ;;
    *) echo "--dead-window $OLD_WINDOW" ;;
  esac
}

l1s() {  # candidate -> the coefficients of both sweeps (alpha 2 shifts the sweep to a higher L0: also 2x lambda)
  case "$1" in *l1x2*) echo 0.4,0.8,1.6 ;; *) echo 0.2,0.4,0.8 ;; esac
}

sa_variant() {  # candidate -> the SA-GSAE variant trained at H (the A side of the comparison)
  case "$1" in
    *noreset*) echo "no-reset" ;;
    *split*) echo "sa-gsae-split" ;;
    *noaux*) echo "no-aux" ;;
    *onesided*) echo "one-sided" ;;  # is the two-sided dead zone itself what converges slowly?
    *) echo "sa-gsae" ;;
  esac
}

sa_widths() {  # candidate -> SA-GSAE's widths (H = 64; b256-widths also 2H: is SA-half slow for want of latents?)
  case "$1" in *widths*) echo "64 128" ;; *) echo 64 ;; esac
}

gated_widths() {  # candidate -> the Gated SAE's widths (2H = 128; b256-widths also H)
  case "$1" in *widths*) echo "64 128" ;; *) echo 128 ;; esac
}

for C in $CANDIDATES; do
  A=$(sa_variant "$C")
  for W in $(sa_widths "$C"); do
    # shellcheck disable=SC2046
    sagsae train --store "$STORE" --out "$OUT/$C/runs" --variant "$A" --width "$W" --l1 "$(l1s "$C")" \
      --tokens "$TOKENS" --snapshots 16 --lr-decay 0 --warmup-steps 100 --log-every 100 --quiet $(flags "$C") $(dead "$C") > /dev/null
  done
  for W in $(gated_widths "$C"); do
    # shellcheck disable=SC2046
    sagsae train --store "$STORE" --out "$OUT/$C/runs" --variant gated --width "$W" --l1 "$(l1s "$C")" \
      --tokens "$TOKENS" --snapshots 16 --lr-decay 0 --warmup-steps 100 --log-every 100 --quiet $(flags "$C") $(dead "$C") > /dev/null
  done
  sagsae eval "$OUT/$C"/runs/* --results "$OUT/$C/results" --checkpoints --lr-windows 0 --quiet > /dev/null
  echo "=== $C: $(flags "$C")"
  sagsae compare --results "$OUT/$C/results" --matched-l0 3 --a "$A"
done
