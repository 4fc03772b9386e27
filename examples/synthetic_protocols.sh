#!/usr/bin/env bash
# docs/METHOD.md §7 Protocols A-C end to end on CPU: 2M tokens per run, at which every run converges
# (docs/RESULTS.md; measured 2026-12-02: 42-46 minutes per seed on one core of a 2-core VM). Rerunnable: resumes.
#   A: all axes paired, rho in {-1, -0.5, 0}; B: fraction of paired axes in {0, 0.1, 0.5, 1};
#   C: widths H = 48 and 2H = 96 on the same data, both architectures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-out/synthetic}
TOKENS=${TOKENS:-2M}
L1=${L1:-0.2,0.4,0.8}
SEEDS=${SEEDS:-0}  # e.g. SEEDS=0,1: the tables and figures then show seed means and spreads
COMMON=(--tokens "$TOKENS" --l1 "$L1" --seeds "$SEEDS" --quiet)
. examples/_setup.sh

cell() {  # cell NAME STORE-FLAGS...: harvest, then SA-GSAE@48 and Gated@96 (and the reverse widths for C)
  local name=$1; shift
  sagsae harvest --source synthetic --tokens 1000000 --eval-tokens 100000 --quiet "$@" --out "$ROOT/stores/$name"
  sagsae train --store "$ROOT/stores/$name" --out "$ROOT/runs/$name" --variant sa-gsae --width 48 "${COMMON[@]}"
  sagsae train --store "$ROOT/stores/$name" --out "$ROOT/runs/$name" --variant gated --width 96 "${COMMON[@]}"
}

for RHO in -1 -0.5 0; do cell "A-rho$RHO" --protocol A --rho "$RHO"; done
for F in 0 0.1 0.5 1; do cell "B-pair$F" --protocol B --paired-fraction "$F"; done
cell C --protocol C
sagsae train --store "$ROOT/stores/C" --out "$ROOT/runs/C" --variant sa-gsae --width 96 "${COMMON[@]}"
sagsae train --store "$ROOT/stores/C" --out "$ROOT/runs/C" --variant gated --width 48 "${COMMON[@]}"

sagsae eval "$ROOT"/runs/*/* --results "$ROOT/results" --checkpoints  # also the snapshots: tokens-to-converge
sagsae compare --results "$ROOT/results" --matched-l0 2.5
for FIG in pareto dead census; do sagsae plot "$FIG" --results "$ROOT/results" --out "$ROOT/figures"; done
