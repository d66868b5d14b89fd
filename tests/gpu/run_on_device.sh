#!/usr/bin/env bash
# What a `device` run executes (the GPU machine has CUDA but none of our Debian libraries: run
# `../shared/tools/device-bundle build .device-bundle` here first and carry .device-bundle).
# Writes logs to $OUT (or ./device-out). Steps: the GPU tests, the same under compute-sanitizer
# memcheck, the GPU benchmark, and the fabric checks on a many-core host (issue 10, item 7).
set -uo pipefail
cd "$(dirname "$0")/../.."
. .device-bundle/env.sh
out="${OUT:-device-out}"; mkdir -p "$out"
steps="${1:-tests,memcheck,bench,fabric}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
echo "cores: $(nproc)" | tee -a "$out/card.txt"
if [[ $steps == *tests* ]]; then
  timeout 300 build/tests/gpu/gpu_tests 2>&1 | grep -v ' I sparsekv' | tee "$out/gpu_tests.log" | tail -25
fi
if [[ $steps == *python* ]]; then
  # The Python package (pure Python over the C ABI) with the machine's own Python and PyTorch.
  rd=$(mktemp -d); build/server/sparsekvd --listen 127.0.0.1:0 --pool-size 16GiB --runtime-dir "$rd" \
    --ready-file "$rd/ready.json" 2> "$out/sparsekvd.log" & dpid=$!
  for _ in $(seq 1 600); do [ -f "$rd/ready.json" ] && break; sleep 0.1; done
  port=$(sed -E 's/.*"port":([0-9]+).*/\1/' "$rd/ready.json")
  SPARSEKV_LIBRARY=$(ls build/client/libsparsekv.so.*.*) SPARSEKV_CUDA_LIBRARY=$(ls build/client/cuda/libsparsekv-cuda.so.*.*) \
    timeout 400 python3 tests/gpu/python_gpu_check.py "127.0.0.1:$port" ${DSA_ARGS:-} 2>&1 | grep -v ' I sparsekv' | tee "$out/python_gpu.log" | tail -8
  echo "python gpu exit ${PIPESTATUS[0]}" | tee -a "$out/python_gpu.log"
  kill $dpid; wait $dpid
fi
if [[ $steps == *ess* ]]; then
  # ESS in miniature: a fixed HBM budget, all-in-HBM vs sparsekv-backed batch, tokens/s.
  rd=$(mktemp -d); build/server/sparsekvd --listen 127.0.0.1:0 --pool-size ${ESS_POOL:-48GiB} --runtime-dir "$rd" \
    --ready-file "$rd/ready.json" 2> "$out/sparsekvd-ess.log" & dpid=$!
  for _ in $(seq 1 1200); do [ -f "$rd/ready.json" ] && break; sleep 0.1; done
  port=$(sed -E 's/.*"port":([0-9]+).*/\1/' "$rd/ready.json")
  SPARSEKV_LIBRARY=$(ls build/client/libsparsekv.so.*.*) SPARSEKV_CUDA_LIBRARY=$(ls build/client/cuda/libsparsekv-cuda.so.*.*) \
    PYTHONPATH=python:python/examples timeout 480 python3 python/examples/ess_miniature.py --server "127.0.0.1:$port" \
    ${ESS_ARGS:-} 2>&1 | grep -v ' I sparsekv' | tee "$out/ess.log" | tail -8
  echo "ess exit ${PIPESTATUS[0]}" | tee -a "$out/ess.log"
  kill $dpid; wait $dpid
fi
if [[ $steps == *memcheck* ]]; then
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [ -n "$cs" ]; then
    timeout 400 "$cs" --tool memcheck --error-exitcode 9 build/tests/gpu/gpu_tests ${MEMCHECK_FILTER:-} \
      2>&1 | grep -v ' I sparsekv' | tail -15 | tee "$out/memcheck.log"
    echo "memcheck exit ${PIPESTATUS[0]}" | tee -a "$out/memcheck.log"
  else
    echo "SKIPPED: no compute-sanitizer" | tee "$out/memcheck.log"
  fi
fi
if [[ $steps == *bench* ]]; then
  timeout 420 build/bench/sparsekv-gpu-bench ${GPU_BENCH_ARGS:-} 2>&1 | grep -v ' I sparsekv' | tee "$out/gpu_bench.jsonl" | tail -60
fi
if [[ $steps == *hugepages* ]]; then
  # The same working-set sweep from a pool of 2 MiB pages (fewer IOMMU translation misses).
  echo "${HUGEPAGES:-13312}" > /proc/sys/vm/nr_hugepages; grep HugePages_Total /proc/meminfo
  timeout 300 build/bench/sparsekv-gpu-bench --backing memfd-hugetlb --only ws ${GPU_BENCH_ARGS:-} 2>&1 \
    | grep -v ' I sparsekv' | tee "$out/gpu_bench_hugetlb.jsonl" | tail -20
fi
if [[ $steps == *fabric* ]]; then
  timeout 200 build/bench/sparsekv-bench --memory-budget 16GiB --only workloads --workloads ctx128k --transport fabric --steps 5 \
    > "$out/fabric_bench.jsonl" 2> "$out/fabric_bench.err"
  echo "fabric bench exit $?" | tee -a "$out/fabric_bench.err"; tail -5 "$out/fabric_bench.err"; tail -4 "$out/fabric_bench.jsonl"
  timeout 200 build/tests/integration_tests "[fabric]" 2>&1 | grep -v ' I sparsekv' | tail -5 | tee "$out/fabric_tests.log"
fi
