#include "client/cuda/residency_reference.h"

#include <cstddef>
#include <unordered_map>

namespace sparsekv::cuda {

ResidencyReference::ResidencyReference(int32_t capacity) : token_(capacity), order_(capacity) { Reset(); }

void ResidencyReference::Reset() {
  for (size_t i = 0; i < token_.size(); ++i) {
    token_[i] = -1;
    order_[i] = static_cast<int32_t>(i);
  }
}

bool ResidencyReference::Step(const int32_t* indices, int32_t k, int64_t readable, StepResult* out) {
  const int32_t n = capacity();
  std::unordered_map<int32_t, int32_t> resident;  // token -> hot entry
  for (int32_t h = 0; h < n; ++h) {
    if (token_[h] >= 0) resident[token_[h]] = h;
  }
  std::vector<uint8_t> touched(n, 0);
  out->slots.assign(k, -1);
  out->miss_tokens.clear();
  out->miss_slots.clear();
  out->hits = out->misses = out->errors = 0;
  std::unordered_map<int32_t, int32_t> miss_rank;  // token -> rank among misses
  std::vector<int32_t> miss_of(k, -1);
  for (int32_t i = 0; i < k; ++i) {
    const int32_t t = indices[i];
    if (t == -1) continue;
    if (t < -1 || t >= readable) {
      out->errors++;
      continue;
    }
    if (auto it = resident.find(t); it != resident.end()) {
      out->slots[i] = it->second;
      touched[it->second] = 1;
      out->hits++;
      continue;
    }
    auto [it, inserted] = miss_rank.emplace(t, static_cast<int32_t>(out->miss_tokens.size()));
    if (inserted) out->miss_tokens.push_back(t);
    else out->hits++;  // a duplicate of a miss is served by the same fetch
    miss_of[i] = it->second;
  }
  const int32_t m = static_cast<int32_t>(out->miss_tokens.size());
  // Victims: untouched entries from the least-recent end.
  out->miss_slots.assign(m, -1);
  int32_t found = 0;
  for (int32_t p = n - 1; p >= 0 && found < m; --p) {
    const int32_t h = order_[p];
    if (!touched[h]) out->miss_slots[found++] = h;
  }
  if (found < m) return false;
  for (int32_t j = 0; j < m; ++j) {
    const int32_t h = out->miss_slots[j];
    token_[h] = out->miss_tokens[j];
    touched[h] = 1;
  }
  for (int32_t i = 0; i < k; ++i) {
    if (miss_of[i] >= 0) out->slots[i] = out->miss_slots[miss_of[i]];
  }
  out->misses = m;
  // Stable partition: touched first.
  std::vector<int32_t> next;
  next.reserve(n);
  for (int32_t h : order_) {
    if (touched[h]) next.push_back(h);
  }
  for (int32_t h : order_) {
    if (!touched[h]) next.push_back(h);
  }
  order_ = std::move(next);
  return true;
}

}  // namespace sparsekv::cuda
