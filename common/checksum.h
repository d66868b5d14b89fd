// RegionChecksum: XXH3-64 over a region's committed entries, layer by layer, token by token,
// entry_bytes each (padding excluded). The daemon computes it when a region is sealed; clients
// and `sparsekvctl verify` recompute it to prove the bytes are still the ones that were sealed.
#ifndef SPARSEKV_COMMON_CHECKSUM_H_
#define SPARSEKV_COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/geometry.h"

namespace sparsekv {

uint64_t RegionChecksum(const std::byte* pool_base, const Geometry& geometry,
                        const std::vector<std::vector<uint32_t>>& pages, int64_t committed_tokens);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_CHECKSUM_H_
