#!/usr/bin/env bash
# Synthetic quickstart: docs/METHOD.md §7 Protocol A (48 antipodal axes in d=64, rho = -1), SA-GSAE at
# width H = 48 against the Gated SAE at 2H = 96 over a small sparsity sweep, with ground-truth
# scoring. About 3 minutes on a 2-core CPU. Rerunnable: every stage resumes or skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart-synthetic}
# shellcheck source=examples/_setup.sh
. examples/_setup.sh

# 1. Ground truth: 48 antipodal axes in d=64, rho = -1 (a pair never fires together).
sagsae harvest --source synthetic --protocol A --tokens 1000000 --eval-tokens 100000 --out "$OUT/store-A"

# 2. SA-half (SA-GSAE, width 48) and Gated-full (width 96), one pass over the data for all six runs.
sagsae train --store "$OUT/store-A" --out "$OUT/runs" --variant sa-gsae --width 48 --l1 0.2,0.4,0.8 \
  --tokens 2M --log-every 100
sagsae train --store "$OUT/store-A" --out "$OUT/runs" --variant gated --width 96 --l1 0.2,0.4,0.8 \
  --tokens 2M --log-every 100

# 3. R², L0, dead fraction, census, axis recovery and latents per axis on held-out tokens.
sagsae eval "$OUT"/runs/* --results "$OUT/results"
sagsae compare --results "$OUT/results" --matched-l0 2.5
sagsae plot pareto --results "$OUT/results" --out "$OUT/figures"
sagsae plot census --results "$OUT/results" --out "$OUT/figures"
