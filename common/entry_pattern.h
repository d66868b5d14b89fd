// EntryPattern fills cache entries with bytes that encode (salt, layer, token, byte position),
// so a demo, test or benchmark can check every fetched byte and tell which entry a wrong byte
// came from. Header-only; not part of the fetch path.
#ifndef SPARSEKV_COMMON_ENTRY_PATTERN_H_
#define SPARSEKV_COMMON_ENTRY_PATTERN_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sparsekv {

inline uint64_t PatternWord(uint64_t salt, int64_t layer, int64_t token, int64_t word) {
  uint64_t x = salt ^ (static_cast<uint64_t>(layer) << 48) ^ (static_cast<uint64_t>(token) << 16) ^
               static_cast<uint64_t>(word);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Writes the entry of (layer, token) to dst (entry_bytes bytes).
inline void FillEntry(uint64_t salt, int64_t layer, int64_t token, int32_t entry_bytes, std::byte* dst) {
  for (int32_t off = 0; off < entry_bytes; off += 8) {
    uint64_t w = PatternWord(salt, layer, token, off / 8);
    std::memcpy(dst + off, &w, entry_bytes - off < 8 ? entry_bytes - off : 8);
  }
}

// True when `entry` is exactly the entry of (layer, token).
inline bool EntryMatches(uint64_t salt, int64_t layer, int64_t token, int32_t entry_bytes,
                         const std::byte* entry) {
  for (int32_t off = 0; off < entry_bytes; off += 8) {
    uint64_t w = PatternWord(salt, layer, token, off / 8);
    if (std::memcmp(entry + off, &w, entry_bytes - off < 8 ? entry_bytes - off : 8) != 0) return false;
  }
  return true;
}

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_ENTRY_PATTERN_H_
