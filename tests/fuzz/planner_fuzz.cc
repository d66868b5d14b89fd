// Fuzz target: the fetch planner and the gather. Whatever the indices, committed length and
// page table, a resolved offset lies inside the pool and the gather copies inside its buffers
// (AddressSanitizer checks the copies).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "client/fetch_planner.h"
#include "client/transports/shm_transport.h"

namespace {
struct Reader {
  const uint8_t* data;
  size_t size;
  size_t at = 0;
  uint32_t Next(uint32_t mod) {
    uint32_t v = 0;
    for (int i = 0; i < 4 && at < size; ++i) v = (v << 8) | data[at++];
    return mod ? v % mod : v;
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in{data, size};
  const int32_t layers = 1 + static_cast<int32_t>(in.Next(4));
  const int32_t entry = 1 + static_cast<int32_t>(in.Next(1024));
  const int64_t page_bytes = 4096;
  auto geometry = sparsekv::MakeGeometry(layers, entry, page_bytes);
  if (!geometry.ok()) return 0;
  const uint32_t pool_pages = 1 + in.Next(16);
  std::vector<std::vector<uint32_t>> pages(layers);
  for (auto& layer : pages) {
    uint32_t n = in.Next(5);
    for (uint32_t i = 0; i < n; ++i) layer.push_back(in.Next(pool_pages));
  }
  std::string key = "fuzz";
  sparsekv::RegionLayout layout{&key, *geometry, &pages};
  const int64_t committed = static_cast<int64_t>(in.Next(0)) - (1 << 30);  // may be negative or huge
  const int32_t layer = static_cast<int32_t>(in.Next(0)) % 8 - 2;
  std::vector<int32_t> indices;
  while (in.at < in.size && indices.size() < 512) indices.push_back(static_cast<int32_t>(in.Next(0)));
  std::vector<int64_t> offsets(indices.size());
  auto status = sparsekv::ResolveTopK(layout, layer, indices, committed, absl::MakeSpan(offsets));
  if (!status.ok()) return 0;
  const int64_t pool_bytes = static_cast<int64_t>(pool_pages) * page_bytes;
  for (int64_t off : offsets) {
    if (off < 0 || off + entry > pool_bytes) std::abort();  // resolved outside the pool
  }
  std::vector<sparsekv::Segment> segments;
  sparsekv::CoalesceSegments(offsets, geometry->entry_stride_bytes, entry, &segments);
  size_t covered = 0;
  for (const auto& s : segments) covered += static_cast<size_t>(s.entries);
  if (covered != offsets.size()) std::abort();
  std::vector<std::byte> pool(static_cast<size_t>(pool_bytes));
  std::vector<std::byte> dst(offsets.size() * static_cast<size_t>(entry));
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<std::byte>(i * 131 + 7);
  sparsekv::GatherEntries(pool.data(), offsets, entry, dst.data());
  // The batch plan of the same entries must deliver the same bytes, within its limits.
  std::vector<std::byte> planned(dst.size());
  std::vector<sparsekv::PlanEntry> entries;
  for (size_t i = 0; i < offsets.size(); ++i) entries.push_back({offsets[i], planned.data() + i * entry});
  std::vector<sparsekv::PlanGroup> groups = {{entries, entry, geometry->entry_stride_bytes}};
  sparsekv::PlanLimits limits{.max_read_bytes = 1024 + (committed & 0xffff), .max_unit_bytes = 1 + (committed & 0xfffff),
                              .max_unit_reads = 1 + static_cast<int32_t>(layer & 7)};
  sparsekv::BatchPlan plan;
  if (!sparsekv::PlanBatch(groups, limits, &plan).ok()) return 0;
  sparsekv::ExecutePlanLocally(plan, pool.data());
  if (planned != dst) std::abort();
  for (const auto& read : plan.reads) {
    if (read.bytes > limits.max_read_bytes) std::abort();
  }
  return 0;
}
