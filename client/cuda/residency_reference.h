// The residency cache's replacement policy, on the CPU: the reference the GPU kernel's decisions
// must equal, decision for decision, on any trace (tests compare them on recorded traces).
//
// One instance is the hot buffer of one (batch slot, layer): `capacity` entries, each holding a
// token or nothing. A step takes the top-k token indices the indexer chose:
//  1. every index whose token is resident is a hit: its hot entry is "touched";
//  2. the tokens that are not resident, each once, in order of first appearance, are the misses;
//  3. victims are the untouched entries nearest the least-recently-used end of the recency order,
//     one per miss (the least recent first); each miss takes its victim's entry;
//  4. the new recency order puts every touched entry (hits and filled victims) first and the rest
//     after, each group keeping its previous relative order (so: exact LRU, ties broken by the
//     previous order).
// Index -1 is padding: it reads nothing and its slot is -1. An index at or past `readable` (the
// committed length) or below -1 is an error: its slot is -1 and it counts in `errors`.
#ifndef SPARSEKV_CLIENT_CUDA_RESIDENCY_REFERENCE_H_
#define SPARSEKV_CLIENT_CUDA_RESIDENCY_REFERENCE_H_

#include <cstdint>
#include <vector>

namespace sparsekv::cuda {

struct StepResult {
  std::vector<int32_t> slots;       // per index: its hot entry, or -1
  std::vector<int32_t> miss_tokens; // the tokens fetched, in the order they were assigned
  std::vector<int32_t> miss_slots;  // the hot entry each miss went to
  int64_t hits = 0;                 // index occurrences served without a fetch
  int64_t misses = 0;               // entries fetched
  int64_t errors = 0;
};

class ResidencyReference {
 public:
  explicit ResidencyReference(int32_t capacity);
  // FAILS (returns false) when the step has more distinct misses than untouched entries
  // (cannot happen while capacity >= k).
  bool Step(const int32_t* indices, int32_t k, int64_t readable, StepResult* out);
  void Reset();

  int32_t capacity() const { return static_cast<int32_t>(token_.size()); }
  const std::vector<int32_t>& tokens() const { return token_; }  // per hot entry, -1 if empty
  const std::vector<int32_t>& order() const { return order_; }   // hot entries, most recent first

 private:
  std::vector<int32_t> token_;
  std::vector<int32_t> order_;
};

}  // namespace sparsekv::cuda

#endif  // SPARSEKV_CLIENT_CUDA_RESIDENCY_REFERENCE_H_
