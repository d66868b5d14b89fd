#include "common/geometry.h"

#include "absl/strings/str_format.h"

namespace sparsekv {

absl::StatusOr<Geometry> MakeGeometry(int32_t layers, int32_t entry_bytes, int64_t page_bytes) {
  if (layers <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("layers must be positive, got %d", layers));
  }
  if (entry_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("entry_bytes must be positive, got %d", entry_bytes));
  }
  if (page_bytes <= 0 || page_bytes % kCacheLineBytes != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "page size must be a positive multiple of %d bytes, got %d", kCacheLineBytes, page_bytes));
  }
  Geometry g;
  g.layers = layers;
  g.entry_bytes = entry_bytes;
  g.entry_stride_bytes = static_cast<int32_t>(RoundUpToCacheLine(entry_bytes));
  if (g.entry_stride_bytes > page_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "entry_bytes %d (%d padded to cache lines) does not fit in one %d-byte pool page",
        entry_bytes, g.entry_stride_bytes, page_bytes));
  }
  g.page_bytes = page_bytes;
  g.tokens_per_page = static_cast<int32_t>(page_bytes / g.entry_stride_bytes);
  return g;
}

}  // namespace sparsekv
