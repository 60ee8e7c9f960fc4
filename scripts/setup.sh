#!/usr/bin/env bash
# Set up the project in ./.venv on a fresh machine that has only Python 3.10+.
# torch is installed first and pinned, so that no resolver pulls a different build later.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,pretrained]"
echo "setup done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')" >&2
