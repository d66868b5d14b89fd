// The fetch planner: turns (layer, token indices) of a region into pool byte offsets, checking
// every index first, and merges runs of adjacent entries into segments for transports that move
// runs (network transports issue one read per segment).
//
// Token t of layer l lives at page_table[l][t / tokens_per_page] * page_bytes
// + (t % tokens_per_page) * entry_stride_bytes. Resolution needs no server: the page tables are
// cached in the client.
#ifndef SPARSEKV_CLIENT_FETCH_PLANNER_H_
#define SPARSEKV_CLIENT_FETCH_PLANNER_H_

#include <cstddef>
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

// ---------------------------------------------------------------------------------------------
// Batch planning for transports that move runs of bytes (network transports: one RDMA READ or
// one server-side gather range per read). A whole decode batch is planned at once: entries of
// every item are sorted by pool offset, an entry asked for twice is read once and copied, runs of
// entries one stride apart merge into one read, and reads are cut into work units that bound
// the bytes and reads in flight.

// Where one resolved entry lives and where it must land.
struct PlanEntry {
  int64_t pool_offset = 0;
  std::byte* dst = nullptr;
};

// The resolved entries of one (region, layer) item, with the region's entry shape.
struct PlanGroup {
  absl::Span<const PlanEntry> entries;
  int32_t entry_bytes = 0;
  int32_t stride_bytes = 0;
};

struct PlanLimits {
  int64_t max_read_bytes = int64_t{1} << 20;  // one read never spans more than this
  int64_t max_unit_bytes = int64_t{4} << 20;  // bytes of the reads of one work unit
  int32_t max_unit_reads = 256;               // reads of one work unit (e.g. a WR chain)
};

// One contiguous read: `entries` entries `stride_bytes` apart from pool_offset; entry k lands
// at dsts[first_dst + k] (entry_bytes of it; the padding between entries is not copied out).
struct PlannedRead {
  int64_t pool_offset = 0;
  int64_t bytes = 0;  // (entries - 1) * stride + entry_bytes
  int32_t entry_bytes = 0;
  int32_t stride_bytes = 0;
  uint32_t first_dst = 0;
  uint32_t entries = 0;
};

struct BatchPlan {
  std::vector<PlannedRead> reads;   // sorted by pool offset
  std::vector<std::byte*> dsts;     // one per read entry, in read order
  // An entry asked for more than once is read once; afterwards copy entry_bytes from .first to
  // .second for each of these.
  struct Copy {
    const std::byte* from;
    std::byte* to;
    int32_t bytes;
  };
  std::vector<Copy> copies;
  std::vector<uint32_t> unit_ends;  // work unit u is reads[u ? unit_ends[u-1] : 0, unit_ends[u])
  int64_t bytes_read = 0;           // what crosses the wire or bus, padding between entries included
  int64_t entries = 0;              // entries delivered, duplicates included

  void Clear();
};

// Plans a batch. INVALID_ARGUMENT for bad limits or group shapes; the plan is rebuilt from
// scratch (its vectors keep their capacity, so a reused plan does not allocate in steady state).
absl::Status PlanBatch(absl::Span<const PlanGroup> groups, const PlanLimits& limits, BatchPlan* plan);

// Runs a plan against memory this process can address (the shm path, and the tests' model of
// what a network transport must deliver).
void ExecutePlanLocally(const BatchPlan& plan, const std::byte* pool_base);

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_FETCH_PLANNER_H_
