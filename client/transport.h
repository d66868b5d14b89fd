// Transport moves entries between a pool and client memory. One class per medium (shm/CXL
// today; libfabric and verbs next), all behind this narrow interface.
//
// The planner has already validated and resolved every entry to a byte offset in the pool, so a
// transport only moves bytes: one virtual call per batch item, tight loops inside, no
// allocation and no lock on the way.
#ifndef SPARSEKV_CLIENT_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sparsekv {

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  // Copies entry_bytes from each pool offset to dst, densely: entry i lands at dst + i * entry_bytes.
  virtual absl::Status Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes,
                              std::byte* dst) = 0;
  // Copies entry i of src (at src + i * entry_bytes) to pool_offsets[i].
  virtual absl::Status Scatter(const std::byte* src, int32_t entry_bytes,
                               absl::Span<const int64_t> pool_offsets) = 0;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORT_H_
