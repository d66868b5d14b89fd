// Client::FetchBatch: many regions' top-k in one call, validated once, spread over the fetch
// workers and, for a cluster view, over the nodes that hold each region.
#include "client/client_state.h"

namespace sparsekv {

absl::Status Client::FetchBatch(absl::Span<const FetchItem> items) {
  if (impl_->cluster) return ClusterFetchBatch(items);
  size_t total = 0;
  for (const auto& item : items) total += item.indices.size();
  std::vector<int64_t>& offsets = OffsetScratch(total);
  // Pass 1: validate and resolve everything; nothing is written until all of it is good.
  std::vector<size_t> starts(items.size());  // where each item's offsets begin
  size_t bytes = 0;
  size_t at = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const FetchItem& item = items[i];
    if (item.region == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("batch item %d has no region", i));
    }
    Region::State& s = *item.region->state_;
    if (s.client != impl_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: region '%s' was opened by another client", i, s.key));
    }
    size_t need = 0;
    if (!CheckedMul(item.indices.size(), static_cast<size_t>(s.geometry.entry_bytes), &need) ||
        item.dst.size() < need) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: destination of %d bytes cannot hold %d entries of %d bytes of region '%s'",
          i, item.dst.size(), item.indices.size(), s.geometry.entry_bytes, s.key));
    }
    if (auto st = s.CheckLease(); !st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
    if (auto st = s.Resolve(item.layer, item.indices, absl::MakeSpan(offsets.data() + at, item.indices.size()));
        !st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
    starts[i] = at;
    bytes += need;
    at += item.indices.size();
  }
  // Pass 2: move the bytes, on helper threads too when the batch is large.
  absl::Mutex error_mu;
  absl::Status error;
  const int64_t* resolved = offsets.data();
  std::function<void(size_t)> copy_item = [&](size_t i) {
    Region::State& s = *items[i].region->state_;
    auto st = s.CurrentTransport()->Gather(absl::MakeConstSpan(resolved + starts[i], items[i].indices.size()),
                                  s.geometry.entry_bytes, items[i].dst.data());
    if (!st.ok()) {
      absl::MutexLock lock(&error_mu);
      if (error.ok()) error = absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
  };
  std::shared_ptr<Transport> shared = items.empty() ? nullptr : items[0].region->state_->CurrentTransport();
  for (const FetchItem& item : items) {
    if (shared != nullptr && item.region->state_->CurrentTransport() != shared) shared = nullptr;
  }
  if (shared != nullptr && shared->prefers_batch()) {
    // A network transport keeps the whole batch in flight itself.
    std::vector<GatherWork> work(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      work[i] = {absl::MakeConstSpan(resolved + starts[i], items[i].indices.size()),
                 items[i].region->state_->geometry.entry_bytes, items[i].dst.data()};
    }
    error = shared->GatherBatch(work);
  } else if (impl_->fetch_workers && static_cast<int64_t>(bytes) >= impl_->options.fetch_parallel_min_bytes) {
    impl_->fetch_workers->ParallelFor(items.size(), copy_item);
  } else {
    for (size_t i = 0; i < items.size(); ++i) copy_item(i);
  }
  if (!error.ok()) return error;
  impl_->CountFetch(static_cast<int64_t>(items.size()), static_cast<int64_t>(total), static_cast<int64_t>(bytes));
  // The leases must still have held when the last byte was copied.
  for (size_t i = 0; i < items.size(); ++i) {
    if (auto st = items[i].region->state_->CheckLease(); !st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
  }
  return absl::OkStatus();
}

// A cluster batch: checked whole first (so an error names the item and nothing is fetched), then
// split by node, every node's part in flight at once.
absl::Status Client::ClusterFetchBatch(absl::Span<const FetchItem> items) {
  const auto nodes = impl_->cluster->Connected();
  std::vector<std::vector<FetchItem>> parts(nodes.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const FetchItem& item = items[i];
    if (item.region == nullptr) return absl::InvalidArgumentError(absl::StrFormat("batch item %d has no region", i));
    Region::State& s = *item.region->state_;
    size_t part = nodes.size();
    for (size_t n = 0; n < nodes.size(); ++n) {
      if (nodes[n].second->impl_ == s.client) part = n;
    }
    if (part == nodes.size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("batch item %d: region '%s' was opened by another client", i, s.key));
    }
    size_t need = 0;
    if (!CheckedMul(item.indices.size(), static_cast<size_t>(s.geometry.entry_bytes), &need) || item.dst.size() < need) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: destination of %d bytes cannot hold %d entries of %d bytes of region '%s'", i,
          item.dst.size(), item.indices.size(), s.geometry.entry_bytes, s.key));
    }
    if (auto st = s.CheckLease(); !st.ok()) return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    if (item.layer < 0 || item.layer >= s.geometry.layers) {
      return absl::OutOfRangeError(absl::StrFormat("batch item %d: layer %d of region '%s' with %d layers", i,
                                                   item.layer, s.key, s.geometry.layers));
    }
    const int64_t committed = s.committed.load();
    for (int32_t index : item.indices) {
      if (index < 0 || index >= committed) {
        return absl::OutOfRangeError(absl::StrFormat(
            "batch item %d: token index %d of region '%s' is outside [0, %d) (committed)", i, index, s.key, committed));
      }
    }
    parts[part].push_back(item);
  }
  std::vector<size_t> used;
  for (size_t n = 0; n < parts.size(); ++n) {
    if (!parts[n].empty()) used.push_back(n);
  }
  absl::Mutex error_mu;
  absl::Status error;
  auto run = [&](size_t u) {
    const size_t n = used[u];
    auto st = nodes[n].second->FetchBatch(parts[n]);
    if (!st.ok()) {
      absl::MutexLock lock(&error_mu);
      if (error.ok()) error = absl::Status(st.code(), absl::StrFormat("node %s: %s", nodes[n].first, st.message()));
    }
  };
  if (used.size() == 1) run(0);
  else if (used.size() > 1) impl_->cluster->workers()->ParallelFor(used.size(), run);
  return error;
}

}  // namespace sparsekv
