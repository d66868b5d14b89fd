#!/usr/bin/env bash
# What a `device` run of the decode engine executes (carry .device-bundle, made by
# `../shared/tools/device-bundle build .device-bundle`):
#   tests/gpu/run_decode.sh kernels            the Triton kernels against torch, launch configs timed
#   tests/gpu/run_decode.sh bench ARGS...      python3 -m sparsekv.bench.decode ARGS (JSON lines to $OUT)
set -uo pipefail
cd "$(dirname "$0")/../.."
. .device-bundle/env.sh
out="${OUT:-device-out}"; mkdir -p "$out"
export SPARSEKV_LIBRARY=$(ls "$PWD"/build/client/libsparsekv.so.*.*) SPARSEKV_CUDA_LIBRARY=$(ls "$PWD"/build/client/cuda/libsparsekv-cuda.so.*.*)
export SPARSEKVD=$PWD/build/server/sparsekvd PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/card.txt"
grep MemTotal /proc/meminfo | tee -a "$out/card.txt"
step=$1; shift
case $step in
  kernels) python3 tests/gpu/decode_kernel_check.py 2>&1 | tee "$out/kernels.jsonl" ;;
  bench) python3 -m sparsekv.bench.decode "$@" --out "$out/decode.jsonl" 2>&1 | grep -v ' I sparsekv' | tee -a "$out/decode.log" | grep -v '^{' ;;
esac
