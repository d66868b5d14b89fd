// Geometry is the shape of one region: layers x tokens x entry, and where each entry lives.
//
// Entries are padded to whole 64-byte cache lines (entry_stride_bytes), so one entry never
// shares a line with another: a top-k gather touches only the lines it needs, and a CXL
// flush/invalidate of one entry never disturbs a neighbour. A layer's storage is a list of
// fixed-size pool pages; token t of a layer lives on page t / tokens_per_page at byte
// (t % tokens_per_page) * entry_stride_bytes of that page. The tail of a page that cannot hold a
// whole entry stays unused.
#ifndef SPARSEKV_COMMON_GEOMETRY_H_
#define SPARSEKV_COMMON_GEOMETRY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/entry_address.h"

namespace sparsekv {

inline constexpr int64_t kCacheLineBytes = 64;

// DeepSeek-V3.2 reference shapes (see shared/WORKLOADS.md).
inline constexpr int32_t kDeepSeekV32Layers = 61;
inline constexpr int32_t kDeepSeekV32LatentEntryBytes = 656;
inline constexpr int32_t kDeepSeekV32IndexerEntryBytes = 132;

struct Geometry {
  int32_t layers = 0;
  int32_t entry_bytes = 0;
  int32_t entry_stride_bytes = 0;
  int32_t tokens_per_page = 0;
  int64_t page_bytes = 0;

  // Pages one layer needs to hold `tokens` entries.
  int64_t PagesPerLayer(int64_t tokens) const {
    return tokens / tokens_per_page + (tokens % tokens_per_page > 0 ? 1 : 0);  // no overflow near INT64_MAX
  }
  // Byte offset in the pool of token t's entry, given its layer's page list (t must be covered).
  template <typename PageList>
  int64_t EntryOffset(const PageList& pages, int64_t t) const {
    return static_cast<int64_t>(EntryPoolOffset<int64_t>(pages[PageOfToken<int64_t>(t, tokens_per_page)], t,
                                                         tokens_per_page, entry_stride_bytes, page_bytes));
  }
};

inline constexpr int64_t RoundUpToCacheLine(int64_t bytes) {
  return (bytes + kCacheLineBytes - 1) / kCacheLineBytes * kCacheLineBytes;
}

// Validates the shape and derives stride and tokens per page. Errors name the bad value.
absl::StatusOr<Geometry> MakeGeometry(int32_t layers, int32_t entry_bytes, int64_t page_bytes);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_GEOMETRY_H_
