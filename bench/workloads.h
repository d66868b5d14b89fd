// The fetch workloads of shared/WORKLOADS.md and the index mixes every fetch benchmark reports.
#ifndef SPARSEKV_BENCH_WORKLOADS_H_
#define SPARSEKV_BENCH_WORKLOADS_H_

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace sparsekv::bench {

struct Workload {
  std::string name;
  int64_t context_tokens;
  int32_t k;          // 0: every token (the indexer workload)
  int32_t layers;
  int32_t entry_bytes;
  std::vector<int> batches;
};

inline std::vector<Workload> StandardWorkloads() {
  return {
      {"ctx8k", 8192, 2048, 61, 656, {1, 8, 32}},
      {"ctx32k", 32768, 2048, 61, 656, {1, 8, 32}},
      {"ctx128k", 131072, 2048, 61, 656, {1, 8}},
      {"indexer", 131072, 0, 61, 132, {1}},
  };
}

// Small shapes with the same structure, for a smoke run in the test suite.
inline std::vector<Workload> QuickWorkloads() {
  return {
      {"ctx8k", 8192, 512, 4, 656, {1, 2}},
      {"indexer", 4096, 0, 4, 132, {1}},
  };
}

// "dsa": a few sink tokens, a recent window and scattered older tokens, like DeepSeek Sparse
// Attention selections. "uniform": uniform random, the worst case.
inline void MakeIndices(const std::string& mix, int64_t context, int32_t k, std::mt19937_64& rng,
                        std::vector<int32_t>* out) {
  out->clear();
  if (k <= 0 || k >= context) {
    for (int64_t t = 0; t < context; ++t) out->push_back(static_cast<int32_t>(t));
    return;
  }
  std::uniform_int_distribution<int64_t> any(0, context - 1);
  if (mix == "uniform") {
    for (int32_t i = 0; i < k; ++i) out->push_back(static_cast<int32_t>(any(rng)));
    return;
  }
  const int64_t sinks = 4, recent = k / 4;
  for (int64_t t = 0; t < sinks; ++t) out->push_back(static_cast<int32_t>(t));
  for (int64_t t = context - recent; t < context; ++t) out->push_back(static_cast<int32_t>(t));
  std::uniform_int_distribution<int64_t> older(sinks, context - recent - 1);
  while (static_cast<int32_t>(out->size()) < k) out->push_back(static_cast<int32_t>(older(rng)));
  std::sort(out->begin(), out->end());  // the indexer's top-k comes back sorted by position
}

}  // namespace sparsekv::bench

#endif  // SPARSEKV_BENCH_WORKLOADS_H_
