#!/usr/bin/env bash
# A smoke test for a bare, offline GPU machine that has python3 with torch and little else, in about
# 5-8 minutes. Here, beforehand (with network):
#
#   bash benchmarks/gpu_smoke.sh fetch      # the wheels the GPU machine lacks, into .whl/ (ignored, ~12 MiB)
#
# then on the GPU machine, from the repository root (with .whl/ beside it):
#
#   bash benchmarks/gpu_smoke.sh            # refuses to run without CUDA
#
# It prints: host syncs per training step per variant and mode (CUDA's sync debug mode) and the peak
# memory of a bf16 step at d 2048 x widths 16k and 32k, batch 8192 (benchmarks/gpu_smoke.py); the step
# on a resident batch against the trainer fed by its real reader, and the step's share of the GEMM rate
# (benchmarks/device_bench.py); and an end-to-end CLI run on CUDA: a bf16 synthetic store, training
# interrupted by SIGINT and resumed, eval with snapshots, browse.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
WHEELS=${WHEELS:-.whl}
# what sagsae needs beyond the GPU image (docs/SCALING.md): zarr 3 and its own dependencies
NEED="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.8.0"

if [ "${1:-}" = fetch ]; then
  mkdir -p "$WHEELS"
  for w in $NEED; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "$w" || exit 1
  done
  du -sh "$WHEELS"
  exit 0
fi

# SMOKE_DRY_CPU=1 runs the same sequence at toy sizes on CPU: it checks this script, it measures nothing
DRY=${SMOKE_DRY_CPU:-0}
PY=${PYTHON:-python3}
if [ "$DRY" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "error: gpu_smoke.sh needs a CUDA device (this machine has none): run it on the GPU machine" >&2
  exit 2
fi
if ! "$PY" -c 'import zarr' 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || {
    echo "error: zarr is missing and $WHEELS/ holds no wheels: run 'bash benchmarks/gpu_smoke.sh fetch' first" >&2
    exit 2
  }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
S() { "$PY" -m sagsae_cli "$@"; }
DEV=cuda SMOKE=() BENCH=() TOK=100M STORE_TOK=4M WAIT=20
if [ "$DRY" = 1 ]; then
  DEV=cpu SMOKE=(--dry-cpu) BENCH=(--device cpu --d 64 --width 512 --batch 1024 --dtype fp32) TOK=1M STORE_TOK=200k WAIT=10
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
status=0
step() { echo; echo "== $*"; }

step "host syncs per step and peak memory (benchmarks/gpu_smoke.py)"
timeout 180 "$PY" benchmarks/gpu_smoke.py "${SMOKE[@]}" || status=1

step "GEMM share, trainer step, reader and real input path (benchmarks/device_bench.py)"
timeout 180 "$PY" benchmarks/device_bench.py --repeats 3 --inner 5 --rows 100000 "${BENCH[@]}" || status=1

step "end to end on CUDA: bf16 synthetic store, train, SIGINT, resume, eval --checkpoints, browse"
S harvest --source synthetic --d 256 --n-axes 384 --tokens "$STORE_TOK" --eval-tokens 100k --dtype bfloat16 \
  --out "$T/store" --quiet || status=1
TRAIN=(train --store "$T/store" --out "$T/runs" --variant "sa-gsae,gated" --width 1024 --l1 0.05 --tokens "$TOK"
  --batch 4096 --snapshots 4 --checkpoint-every 20 --device "$DEV" --quiet)
S "${TRAIN[@]}" &
pid=$!
sleep "$WAIT"
kill -INT "$pid"
wait "$pid"
rc=$?
echo "train after SIGINT: exit $rc (2 expected: 'stopped by signal ... rerun the same command to resume')"
[ "$rc" = 2 ] || status=1
ls "$T"/runs/*/checkpoints/last.pt
S "${TRAIN[@]}" || status=1
S eval "$T"/runs/* --results "$T/results" --eval-tokens 50k --checkpoints --device "$DEV" --quiet || status=1
S compare --results "$T/results" --width-ratio 1 || status=1
S browse "$T/runs/sa-gsae-w1024-l1_0.05-s0" --out "$T/site" --tokens 20k --latents 0-63 --device "$DEV" --quiet ||
  status=1
find "$T/site" -maxdepth 1 | head -5
echo
echo "gpu_smoke: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
