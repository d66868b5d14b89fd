#include "client/fetch_planner.h"

#include "absl/strings/str_format.h"

namespace sparsekv {

absl::Status ResolveTopK(const RegionLayout& layout, int32_t layer,
                         absl::Span<const int32_t> indices, int64_t readable_tokens,
                         absl::Span<int64_t> offsets) {
  const Geometry& g = layout.geometry;
  if (layer < 0 || layer >= g.layers) {
    return absl::OutOfRangeError(absl::StrFormat("layer %d of region '%s' is not in [0, %d)",
                                                 layer, *layout.key, g.layers));
  }
  if (offsets.size() < indices.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "planner scratch holds %d offsets, %d indices given", offsets.size(), indices.size()));
  }
  const std::vector<uint32_t>& pages = (*layout.pages)[layer];
  const int64_t covered = static_cast<int64_t>(pages.size()) * g.tokens_per_page;
  // A negative committed length (a corrupt reply) must not turn into a huge unsigned bound.
  const int64_t limit = std::max<int64_t>(0, std::min(readable_tokens, covered));
  const int64_t tokens_per_page = g.tokens_per_page;
  const int64_t stride = g.entry_stride_bytes;
  const int64_t page_bytes = g.page_bytes;
  // One pass: a branch-free bounds check (unsigned compare catches negatives), then resolve.
  bool all_in_range = true;
  for (size_t i = 0; i < indices.size(); ++i) {
    all_in_range &= static_cast<uint64_t>(indices[i]) < static_cast<uint64_t>(limit);
  }
  if (!all_in_range) {
    for (size_t i = 0; i < indices.size(); ++i) {
      int64_t t = indices[i];
      if (t < 0) {
        return absl::OutOfRangeError(absl::StrFormat(
            "index %d (position %d) of layer %d of region '%s' is negative", t, i, layer, *layout.key));
      }
      if (t >= limit) {
        return absl::OutOfRangeError(absl::StrFormat(
            "token %d (position %d) of layer %d is past the committed length %d of region '%s'",
            t, i, layer, readable_tokens, *layout.key));
      }
    }
  }
  for (size_t i = 0; i < indices.size(); ++i) {
    const int64_t t = indices[i];
    const int64_t page = t / tokens_per_page;
    offsets[i] = static_cast<int64_t>(pages[page]) * page_bytes + (t - page * tokens_per_page) * stride;
  }
  return absl::OkStatus();
}

size_t CoalesceSegments(absl::Span<const int64_t> offsets, int32_t entry_stride_bytes,
                        int32_t entry_bytes, std::vector<Segment>* out) {
  out->clear();
  for (size_t i = 0; i < offsets.size(); ++i) {
    if (!out->empty()) {
      Segment& last = out->back();
      if (offsets[i] == last.pool_offset + static_cast<int64_t>(last.entries) * entry_stride_bytes) {
        ++last.entries;
        continue;
      }
    }
    out->push_back({offsets[i], static_cast<int64_t>(i) * entry_bytes, 1});
  }
  return out->size();
}

}  // namespace sparsekv
