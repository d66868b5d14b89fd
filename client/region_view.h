// What other parts of libsparsekv (the CUDA component) may see of a Region handle beyond the
// public API: its geometry, page-table snapshot, committed length and transport. Not
// installed.
#ifndef SPARSEKV_CLIENT_REGION_VIEW_H_
#define SPARSEKV_CLIENT_REGION_VIEW_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "client/transport.h"
#include "common/geometry.h"
#include "sparsekv/region.h"

namespace sparsekv {

// An immutable snapshot of a region's page table; replaced whole when the region grows.
struct PageTable {
  std::vector<std::vector<uint32_t>> layers;
  int64_t capacity_tokens = 0;
};

struct RegionView {
  Geometry geometry;
  std::shared_ptr<const PageTable> table;
  int64_t committed_tokens = 0;
  std::shared_ptr<Transport> transport;
};

// A consistent view of the handle now (the table is the snapshot current at the call).
RegionView ViewOf(const Region& region);

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_REGION_VIEW_H_
