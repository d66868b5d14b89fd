#include "client/fetch_planner.h"

#include <algorithm>
#include <cstring>

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
    offsets[i] = g.EntryOffset(pages, indices[i]);
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

void BatchPlan::Clear() {
  reads.clear();
  dsts.clear();
  copies.clear();
  unit_ends.clear();
  bytes_read = 0;
  entries = 0;
}

absl::Status PlanBatch(absl::Span<const PlanGroup> groups, const PlanLimits& limits, BatchPlan* plan) {
  plan->Clear();
  if (limits.max_read_bytes <= 0 || limits.max_unit_bytes <= 0 || limits.max_unit_reads <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "plan limits must be positive: read %d bytes, unit %d bytes, unit %d reads",
        limits.max_read_bytes, limits.max_unit_bytes, limits.max_unit_reads));
  }
  struct Flat {
    int64_t offset;
    std::byte* dst;
    int32_t entry_bytes;
    int32_t stride_bytes;
  };
  thread_local std::vector<Flat> flat;
  flat.clear();
  for (size_t g = 0; g < groups.size(); ++g) {
    const PlanGroup& group = groups[g];
    if (group.entry_bytes <= 0 || group.stride_bytes < group.entry_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "plan group %d: entry of %d bytes with a stride of %d", g, group.entry_bytes, group.stride_bytes));
    }
    if (group.entry_bytes > limits.max_read_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "plan group %d: a %d-byte entry exceeds the %d-byte read limit", g, group.entry_bytes,
          limits.max_read_bytes));
    }
    for (const PlanEntry& e : group.entries) flat.push_back({e.pool_offset, e.dst, group.entry_bytes, group.stride_bytes});
  }
  plan->entries = static_cast<int64_t>(flat.size());
  std::stable_sort(flat.begin(), flat.end(), [](const Flat& a, const Flat& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < flat.size(); ++i) {
    const Flat& e = flat[i];
    if (!plan->reads.empty()) {
      PlannedRead& last = plan->reads.back();
      const int64_t last_entry = last.pool_offset + static_cast<int64_t>(last.entries - 1) * last.stride_bytes;
      if (e.offset == last_entry && e.entry_bytes == last.entry_bytes) {  // the same entry again
        plan->copies.push_back({plan->dsts.back(), e.dst, e.entry_bytes});
        continue;
      }
      if (e.offset == last_entry + last.stride_bytes && e.stride_bytes == last.stride_bytes &&
          e.entry_bytes == last.entry_bytes && last.bytes + last.stride_bytes <= limits.max_read_bytes) {
        ++last.entries;
        last.bytes += last.stride_bytes;
        plan->dsts.push_back(e.dst);
        continue;
      }
    }
    plan->reads.push_back({e.offset, e.entry_bytes, e.entry_bytes, e.stride_bytes,
                           static_cast<uint32_t>(plan->dsts.size()), 1});
    plan->dsts.push_back(e.dst);
  }
  int64_t unit_bytes = 0;
  int32_t unit_reads = 0;
  for (size_t r = 0; r < plan->reads.size(); ++r) {
    const int64_t bytes = plan->reads[r].bytes;
    plan->bytes_read += bytes;
    if (unit_reads > 0 && (unit_bytes + bytes > limits.max_unit_bytes || unit_reads + 1 > limits.max_unit_reads)) {
      plan->unit_ends.push_back(static_cast<uint32_t>(r));
      unit_bytes = 0;
      unit_reads = 0;
    }
    unit_bytes += bytes;
    ++unit_reads;
  }
  if (!plan->reads.empty()) plan->unit_ends.push_back(static_cast<uint32_t>(plan->reads.size()));
  return absl::OkStatus();
}

void ExecutePlanLocally(const BatchPlan& plan, const std::byte* pool_base) {
  for (const PlannedRead& read : plan.reads) {
    const std::byte* src = pool_base + read.pool_offset;
    for (uint32_t k = 0; k < read.entries; ++k) {
      std::memcpy(plan.dsts[read.first_dst + k], src + static_cast<int64_t>(k) * read.stride_bytes,
                  static_cast<size_t>(read.entry_bytes));
    }
  }
  for (const auto& copy : plan.copies) std::memcpy(copy.to, copy.from, static_cast<size_t>(copy.bytes));
}

}  // namespace sparsekv
