#!/usr/bin/env bash
# What a `device` run of the decode engine executes (carry .device-bundle, made by
# `../shared/tools/device-bundle build .device-bundle`):
#   tests/gpu/run_decode.sh kernels            the Triton kernels against torch, launch configs timed
#   tests/gpu/run_decode.sh bench ARGS...      python3 -m sparsekv.bench.decode ARGS (JSON lines to $OUT)
#   tests/gpu/run_decode.sh hisparse           the HiSparse host-pool driver against a daemon it starts
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
  hisparse)
    rd=$(mktemp -d); build/server/sparsekvd --listen 127.0.0.1:0 --pool-size 4GiB --runtime-dir "$rd" \
      --ready-file "$rd/ready.json" 2> "$out/sparsekvd-hisparse.log" & dpid=$!
    for _ in $(seq 1 600); do [ -f "$rd/ready.json" ] && break; sleep 0.1; done
    port=$(sed -E 's/.*"port":([0-9]+).*/\1/' "$rd/ready.json")
    python3 tests/gpu/hisparse_driver.py "127.0.0.1:$port" 2>&1 | grep -v ' I sparsekv' | tee "$out/hisparse.log"
    kill $dpid; wait $dpid ;;
  bench) python3 -m sparsekv.bench.decode "$@" --out "$out/decode.jsonl" 2>&1 | grep -v ' I sparsekv' | tee -a "$out/decode.log" | grep -v '^{' ;;
esac
