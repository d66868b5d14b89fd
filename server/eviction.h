// EvictionPolicy decides which regions go first when the pool must make room.
//
// The RegionTable offers only regions that may be evicted at all (sealed, no unexpired lease);
// a policy orders them, first victim first. LRU is the default; a policy is a small class, so
// size-aware or tenant-aware policies slot in beside it.
#ifndef SPARSEKV_SERVER_EVICTION_H_
#define SPARSEKV_SERVER_EVICTION_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sparsekv {

struct EvictionCandidate {
  std::string key;
  int64_t pages = 0;
  std::chrono::steady_clock::time_point last_access;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual const char* name() const = 0;
  // Reorders candidates so the first should be evicted first.
  virtual void Order(std::vector<EvictionCandidate>* candidates) const = 0;
};

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name);

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_EVICTION_H_
