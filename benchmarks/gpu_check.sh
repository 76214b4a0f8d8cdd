#!/usr/bin/env bash
# One-shot GPU check: run after the README's install on a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh
#
# Installs nothing and needs no weights or data (the demo stage generates the embedded synthetic
# set in a temporary folder). Stages, each under its own time limit (seconds; they sum, with the
# grace period of each, to under 9.5 minutes), each logged to benchmarks/results/gpu_<stage>.txt;
# a stage that fails or times out does not stop the next one:
#
#   doctor       `mambapro doctor`: machine, versions, extras, and what scan_backend=auto picks on
#                each GPU with the self-check of the fused scan backends (fp32, bf16) against the
#                torch backend; fails when a self-check fails (docs/gpu.md)
#   device       the GPU(s), driver, torch / CUDA / Triton / mamba-ssm versions
#   tests        the `gpu` tests (tests/test_gpu.py, and the compiled Triton scan test)
#   scan         benchmarks/bench_scan_cuda.py: loop, torch, triton (and mamba_ssm) backends,
#                fwd and fwd+bwd at B in {8, 64}, L in {128, 384, 1536}, D = 1024, N = 16
#   aggregation  one MA block vs one Transformer block, fwd+bwd at 3 x {128, 512, 2048} tokens
#   train        benchmarks/bench_train.py --device cuda --batch 64: Table 3 rows A, F, G
#                (bf16 autocast): samples/s and peak memory
#   demo         `mambapro train` of the demo preset on CUDA for 2 epochs, timed
#   input        benchmarks/bench_input.py --cuda-only: triplets/s delivered to the train step at
#                batch 64, 256x128: today's pipeline vs data.cache=memory + augment_on=device on CUDA
#
# The summary (stage, status, seconds) is printed at the end and written to
# benchmarks/results/gpu_summary.txt. Exit status: 0 when every stage passed, 1 otherwise, and
# 0 at once, with a message, on a machine without a CUDA GPU.
# MAMBAPRO_GPU_CHECK_STAGES="tests scan" runs only the named stages; PYTHON picks the
# interpreter (default: python, i.e. the activated venv's).

set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1  # a stage killed at its limit still leaves what it printed in its log

if ! cuda=$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null); then
    echo "gpu_check: '$PY' cannot import torch; activate the environment of the README's install first" >&2
    exit 1
fi
if [ "$cuda" != "True" ]; then
    echo "gpu_check: no GPU here (torch.cuda.is_available() is False), so there is nothing to check;"
    echo "run this script on a machine with a CUDA GPU after the README's install."
    exit 0
fi

RES=benchmarks/results
mkdir -p "$RES"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mambapro-gpu-check.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
STAGES=${MAMBAPRO_GPU_CHECK_STAGES:-doctor device tests scan aggregation train demo input}
GRACE=5  # seconds between SIGTERM at the limit and SIGKILL
SUMMARY=()
FAILED=0
START=$SECONDS

# run_stage NAME LIMIT COMMAND...: run COMMAND under `timeout LIMIT`, output to the screen and to
# $RES/gpu_NAME.txt, and add a summary row.
run_stage() {
    local name=$1 limit=$2
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    local log="$RES/gpu_$name.txt" t0=$SECONDS rc status
    echo
    echo "=== $name (limit $limit s): $*"
    { echo "# gpu_check stage '$name', $(date -u '+%Y-%m-%d %H:%M:%S UTC'), limit $limit s"; echo "# \$ $*"; } >"$log"
    timeout --kill-after="$GRACE" "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || FAILED=1
    echo "# $status after $((SECONDS - t0)) s" >>"$log"
    SUMMARY+=("$(printf '%-12s %-18s %8s %8s' "$name" "$status" "$((SECONDS - t0))" "$limit")")
}

cat >"$WORK/device.py" <<'EOF'
import importlib.util
import platform

import torch

from mambapro.ops import resolve_backend

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(
        f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
        f"{p.multi_processor_count} SMs, bf16 supported: {torch.cuda.is_bf16_supported()}"
    )
for mod in ("triton", "mamba_ssm"):
    version = __import__(mod).__version__ if importlib.util.find_spec(mod) else "not installed"
    print(f"{mod}: {version}")
print(f"model.scan_backend=auto picks: {resolve_backend('auto', 'cuda')}")
EOF
MAMBAPRO=(mambapro)
command -v mambapro >/dev/null || MAMBAPRO=("$PY" -c 'import sys; from mambapro.cli import main; sys.exit(main())')

run_stage doctor 40 "${MAMBAPRO[@]}" doctor
run_stage device 15 bash -c 'command -v nvidia-smi >/dev/null && nvidia-smi; "$0" "$1"' "$PY" "$WORK/device.py"
run_stage tests 110 "$PY" -m pytest -q -n 0 -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_scan_triton.py
run_stage scan 85 "$PY" benchmarks/bench_scan_cuda.py --repeats 5 --out "$WORK/scan.txt"
run_stage aggregation 60 "$PY" benchmarks/bench_aggregation_scaling.py --device cuda --batch 64 \
    --tokens 128,512,2048 --amp bf16 --repeats 5 --out "$WORK/aggregation.txt" \
    --plot "$RES/gpu_aggregation_scaling.png"
run_stage train 85 "$PY" benchmarks/bench_train.py --device cuda --batch 64 --steps 5
run_stage demo 70 "${MAMBAPRO[@]}" train --config demo --data-root "$WORK/data" --output "$WORK/demo-run" \
    train.device=cuda train.epochs=2 model.scan_backend=auto
run_stage input 35 "$PY" benchmarks/bench_input.py --cuda-only --batches 5 --repeats 1

{
    echo "gpu_check summary, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    "$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__)' 2>/dev/null
    printf '%-12s %-18s %8s %8s\n' stage status seconds limit
    printf '%s\n' "${SUMMARY[@]}"
    echo "total $((SECONDS - START)) s; logs: $RES/gpu_<stage>.txt"
} | tee "$RES/gpu_summary.txt"
exit "$FAILED"
