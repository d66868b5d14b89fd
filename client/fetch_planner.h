// The fetch planner: turns (layer, token indices) of a region into pool byte offsets, checking
// every index first, and merges runs of adjacent entries into segments for transports that move
// runs (network transports issue one read per segment).
//
// Token t of layer l lives at page_table[l][t / tokens_per_page] * page_bytes
// + (t % tokens_per_page) * entry_stride_bytes. Resolution needs no server: the page tables are
// cached in the client.
#ifndef SPARSEKV_CLIENT_FETCH_PLANNER_H_
#define SPARSEKV_CLIENT_FETCH_PLANNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/geometry.h"

namespace sparsekv {

struct RegionLayout {
  const std::string* key = nullptr;
  Geometry geometry;
  const std::vector<std::vector<uint32_t>>* pages = nullptr;  // [layer] -> pool pages
};

// Checks that `layer` exists and that every index is in [0, readable_tokens) and covered by the
// page table, then writes offsets[i] for indices[i]. On error nothing of `offsets` is meaningful
// and the message names the first bad index, its position and the limit.
absl::Status ResolveTopK(const RegionLayout& layout, int32_t layer,
                         absl::Span<const int32_t> indices, int64_t readable_tokens,
                         absl::Span<int64_t> offsets);

// A run of `entries` entries, adjacent in the pool, that land densely at dst_offset.
struct Segment {
  int64_t pool_offset = 0;
  int64_t dst_offset = 0;
  int32_t entries = 0;
};

// Merges consecutive offsets that are exactly one stride apart (same page, next token) into
// segments, in the order given. Returns the number of segments written to *out (cleared first).
size_t CoalesceSegments(absl::Span<const int64_t> offsets, int32_t entry_stride_bytes,
                        int32_t entry_bytes, std::vector<Segment>* out);

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_FETCH_PLANNER_H_
