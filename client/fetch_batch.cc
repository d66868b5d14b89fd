// Client::FetchBatch: many regions' top-k in one call, validated once, spread over the fetch
// workers and, for a cluster view, over the nodes that hold each region.
#include "client/client_state.h"

namespace sparsekv {

struct Client::ResolvedBatch {
  absl::Span<const FetchItem> items;
  std::vector<size_t> numbers;   // how errors name each item (its place in the caller's batch)
  std::vector<int64_t> offsets;  // resolved pool offsets of all items, item after item
  std::vector<size_t> starts;    // where each item's offsets begin
  size_t bytes = 0;
  size_t total = 0;              // indices
};

namespace {

absl::Status ItemError(size_t number, const absl::Status& st) {
  return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", number, st.message()));
}

}  // namespace

// Pass 1: validate and resolve everything; nothing is written until all of it is good.
absl::Status Client::ResolveBatch(absl::Span<const FetchItem> items, absl::Span<const size_t> numbers,
                                  ResolvedBatch* out) const {
  out->items = items;
  out->numbers.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) out->numbers[i] = numbers.empty() ? i : numbers[i];
  out->total = 0;
  for (const auto& item : items) out->total += item.indices.size();
  out->offsets.resize(out->total);
  out->starts.resize(items.size());
  out->bytes = 0;
  size_t at = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const FetchItem& item = items[i];
    const size_t number = out->numbers[i];
    if (item.region == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("batch item %d has no region", number));
    }
    Region::State& s = *item.region->state_;
    if (s.client != impl_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: region '%s' was opened by another client", number, s.key));
    }
    size_t need = 0;
    if (auto st = s.PrepareFetch(item.layer, item.indices, item.dst,
                                 absl::MakeSpan(out->offsets.data() + at, item.indices.size()), &need);
        !st.ok()) {
      return ItemError(number, st);
    }
    out->starts[i] = at;
    out->bytes += need;
    at += item.indices.size();
  }
  return absl::OkStatus();
}

absl::Status Client::FetchBatch(absl::Span<const FetchItem> items) {
  if (impl_->cluster) return ClusterFetchBatch(items);
  thread_local ResolvedBatch batch;  // keeps its buffers: a steady decode loop allocates nothing
  if (auto st = ResolveBatch(items, {}, &batch); !st.ok()) return st;
  return MoveBatch(batch);
}

absl::Status Client::MoveBatch(const ResolvedBatch& batch) {
  absl::Span<const FetchItem> items = batch.items;
  const std::vector<size_t>& starts = batch.starts;
  const size_t bytes = batch.bytes;
  const size_t total = batch.total;
  // Pass 2: move the bytes, on helper threads too when the batch is large.
  absl::Mutex error_mu;
  absl::Status error;
  const int64_t* resolved = batch.offsets.data();
  std::function<void(size_t)> copy_item = [&](size_t i) {
    Region::State& s = *items[i].region->state_;
    auto st = s.CurrentTransport()->Gather(absl::MakeConstSpan(resolved + starts[i], items[i].indices.size()),
                                  s.geometry.entry_bytes, items[i].dst.data());
    if (!st.ok()) {
      absl::MutexLock lock(&error_mu);
      if (error.ok()) error = ItemError(batch.numbers[i], st);
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
      return ItemError(batch.numbers[i], st);
    }
  }
  return absl::OkStatus();
}

// A cluster batch: split by node, every node's part checked and resolved on that node's client
// (so an error names the item and nothing is fetched), then every part in flight at once.
absl::Status Client::ClusterFetchBatch(absl::Span<const FetchItem> items) {
  const auto nodes = impl_->cluster->Connected();
  std::vector<std::vector<FetchItem>> parts(nodes.size());
  std::vector<std::vector<size_t>> numbers(nodes.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const FetchItem& item = items[i];
    if (item.region == nullptr) return absl::InvalidArgumentError(absl::StrFormat("batch item %d has no region", i));
    const Region::State& s = *item.region->state_;
    size_t part = nodes.size();
    for (size_t n = 0; n < nodes.size(); ++n) {
      if (nodes[n].second->impl_ == s.client) part = n;
    }
    if (part == nodes.size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("batch item %d: region '%s' was opened by another client", i, s.key));
    }
    parts[part].push_back(item);
    numbers[part].push_back(i);
  }
  std::vector<size_t> used;
  for (size_t n = 0; n < parts.size(); ++n) {
    if (!parts[n].empty()) used.push_back(n);
  }
  std::vector<ResolvedBatch> resolved(used.size());
  for (size_t u = 0; u < used.size(); ++u) {
    const size_t n = used[u];
    if (auto st = nodes[n].second->ResolveBatch(parts[n], numbers[n], &resolved[u]); !st.ok()) return st;
  }
  absl::Mutex error_mu;
  absl::Status error;
  auto run = [&](size_t u) {
    const size_t n = used[u];
    auto st = nodes[n].second->MoveBatch(resolved[u]);
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
