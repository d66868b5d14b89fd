// Helpers that write regions with EntryPattern bytes and check fetched entries, so every
// integration test can tell a misdirected byte from a right one.
#ifndef SPARSEKV_TESTS_SUPPORT_PATTERN_REGIONS_H_
#define SPARSEKV_TESTS_SUPPORT_PATTERN_REGIONS_H_

#include <memory>
#include <string>
#include <vector>

#include "common/entry_pattern.h"
#include "sparsekv/client.h"

namespace sparsekv::testing {

// Writes tokens [first, first + n) of every layer with the pattern of `salt`.
inline absl::Status WritePattern(Region& region, uint64_t salt, int64_t first, int64_t n) {
  std::vector<std::byte> buf(static_cast<size_t>(n) * region.entry_bytes());
  for (int32_t l = 0; l < region.layers(); ++l) {
    for (int64_t t = 0; t < n; ++t) {
      FillEntry(salt, l, first + t, region.entry_bytes(), buf.data() + t * region.entry_bytes());
    }
    if (auto s = region.Write(l, first, buf); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Creates, fills and commits a region of `tokens` tokens (optionally sealed).
inline absl::StatusOr<std::shared_ptr<Region>> MakePatternRegion(Client& client, const std::string& key,
                                                                 int32_t layers, int32_t entry_bytes,
                                                                 int64_t tokens, uint64_t salt,
                                                                 bool seal = false) {
  auto region = client.Create({key, layers, entry_bytes, tokens, 0});
  if (!region.ok()) return region.status();
  if (auto s = WritePattern(**region, salt, 0, tokens); !s.ok()) return s;
  if (auto s = (*region)->Commit(tokens); !s.ok()) return s;
  if (seal) {
    if (auto s = (*region)->Seal(); !s.ok()) return s;
  }
  return region;
}

// Number of entries of dst that are not the pattern entries of (layer, indices[i]).
inline int64_t CountWrong(uint64_t salt, int32_t layer, const std::vector<int32_t>& indices,
                          int32_t entry_bytes, const std::vector<std::byte>& dst) {
  int64_t wrong = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    wrong += EntryMatches(salt, layer, indices[i], entry_bytes, dst.data() + i * entry_bytes) ? 0 : 1;
  }
  return wrong;
}

// Fetches `indices` of every layer and counts wrong entries (-1 if the fetch failed).
inline int64_t VerifyAllLayers(Region& region, uint64_t salt, const std::vector<int32_t>& indices) {
  std::vector<std::byte> dst(indices.size() * region.entry_bytes());
  int64_t wrong = 0;
  for (int32_t l = 0; l < region.layers(); ++l) {
    if (!region.Fetch(l, indices, absl::MakeSpan(dst)).ok()) return -1;
    wrong += CountWrong(salt, l, indices, region.entry_bytes(), dst);
  }
  return wrong;
}

}  // namespace sparsekv::testing

#endif  // SPARSEKV_TESTS_SUPPORT_PATTERN_REGIONS_H_
