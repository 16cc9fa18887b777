#!/usr/bin/env bash
# Issue 29's GPU run, prepared: the bench model and the reference model trained on the whole-field folds on a lent
# GPU machine (JAX there, no TensorFlow, no Keras, no network). Here first: `make device-pack` (the fields and the
# Keras wheels into .device/, ignored by git). Then, with the device tool, from the repo root:
#     run(command="bash bench/device_folds.sh", carry=[".device"], timeout_s=570)
# `make bench-gpu-folds` runs the same here (--local: this venv's Python and Keras backend, ../shared's fields).
# One JSON line per finished fold goes to $OUT/rows.jsonl as it finishes, so a run stopped at its limit still
# brings back what it did; the log is $OUT/log. Sized for about 7-8 minutes on an H100/H200: the bench model on all
# 5 folds for the CPU run's 5,000 steps, the reference model (124,996,866 parameters) on folds 0-2 for 45 s each at
# batch 8. MODELS (--model specs separated by |), FIELDS, FOLDS and LIMIT (seconds; 540 there, none with --local)
# change that.
set -uo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-"configs/bench_cpu.config steps=5000|configs/edf_cervical.config seconds=45 folds=0,1,2 train.batch_size=8"}
if [ "${1:-}" = --local ]; then
    PY=${PYTHON:-.venv/bin/python}
    FIELDS=${FIELDS:-../shared/data/isbi2014/EDF}
    OUT=${OUT:-bench/out/gpu-folds-$(date -u +%Y%m%dT%H%M%S)}
    LIMIT=${LIMIT:-0}  # no limit here (timeout 0)
else
    test -d .device/whl -a -d .device/fields || {
        echo "no .device/ here: run 'make device-pack' on the dev machine and carry .device" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax
    PY=python3
    FIELDS=${FIELDS:-.device/fields}
    OUT=${OUT:-bench/out/device}
fi
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
fi
args=()
IFS='|' read -ra specs <<<"$MODELS"
for spec in "${specs[@]}"; do args+=(--model "$spec"); done
timeout "${LIMIT:-540}" "$PY" bench/bench_gpu_folds.py --fields "$FIELDS" --folds "${FOLDS:-5}" "${args[@]}" \
    --precision mixed_bfloat16 \
    --out "$OUT/rows.jsonl" 2>&1 | grep --line-buffered -v "^[IW]0000\|absl::InitializeLog" | tee "$OUT/log"
