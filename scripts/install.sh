#!/usr/bin/env bash
# Install sapo-swarm into a virtual environment (default .venv) with a CPU build of torch.
#
#   bash scripts/install.sh            # runtime only
#   bash scripts/install.sh dev        # + test tools (pytest, hypothesis, peft)
#
# torch is installed first, pinned, so that the project's loose `torch>=2.4` is already satisfied and
# pip never pulls a multi-GB CUDA build on a CPU machine. Settings (environment variables):
#   SAPO_TORCH=torch==2.13.0   which torch to install first ("skip": keep the one already in the venv,
#                              e.g. a CUDA build you installed for your GPU)
#   SAPO_TORCH_INDEX=URL       a wheel index for that torch, e.g. PyTorch's CPU-only index on a
#                              machine whose default index would serve a CUDA build
#   SAPO_VENV=.venv            where the virtual environment goes
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SAPO_VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${SAPO_TORCH:-torch==2.13.0}"
EXTRAS="${1:-}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ "$TORCH_SPEC" != "skip" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${SAPO_TORCH_INDEX:-}" ]; then
    "$VENV/bin/python" -m pip install --quiet --index-url "$SAPO_TORCH_INDEX" "$TORCH_SPEC"
  else
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
  fi
fi
if [ -n "$EXTRAS" ]; then
  "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install --quiet -e .
fi
echo "installed into $VENV: $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
