#include "common/checksum.h"

#include <xxhash.h>

namespace sparsekv {

uint64_t RegionChecksum(const std::byte* pool_base, const Geometry& g,
                        const std::vector<std::vector<uint32_t>>& pages, int64_t committed_tokens) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const auto& layer : pages) {
    int64_t remaining = committed_tokens;
    for (uint32_t page : layer) {
      if (remaining <= 0) break;
      const std::byte* at = pool_base + static_cast<int64_t>(page) * g.page_bytes;
      int64_t n = std::min<int64_t>(remaining, g.tokens_per_page);
      if (g.entry_stride_bytes == g.entry_bytes) {
        XXH3_64bits_update(state, at, static_cast<size_t>(n) * g.entry_bytes);
      } else {
        for (int64_t t = 0; t < n; ++t) XXH3_64bits_update(state, at + t * g.entry_stride_bytes, g.entry_bytes);
      }
      remaining -= n;
    }
  }
  uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

}  // namespace sparsekv
