#!/usr/bin/env bash
# The GPU paths in a few minutes (docs/gpu_check.md): installs what is missing, then runs
# scripts/gpu_check.py and prints its table. `--cpu` runs the same check in miniature on a CPU.
#   scripts/gpu_check.sh            # on a machine with a CUDA GPU (about 6 minutes on one H100-class GPU)
#   scripts/gpu_check.sh --cpu      # anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import lrlab, torch" 2>/dev/null; then
  if [[ " $* " == *" --cpu "* ]]; then
    make install VENV="$VENV"          # the pinned CPU torch first
  else
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q torch   # PyPI's Linux wheel carries CUDA
    "$VENV/bin/python" -m pip install -q -e .
  fi
fi
if [[ " $* " != *" --cpu "* ]] && ! "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  if command -v nvidia-smi >/dev/null; then   # a CPU-only torch on a GPU machine: replace it with PyPI's CUDA build
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps torch
  fi
fi
exec "$VENV/bin/python" scripts/gpu_check.py "$@"
