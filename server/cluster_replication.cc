// ClusterMember: replication: the queue of sealed regions to copy, Replicate (copy until
// enough live nodes hold a region) and CopyTo (one copy to one node, checksum-verified).
#include "server/cluster_member.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/entry_address.h"
#include "common/host_id.h"
#include "common/log.h"
#include "client/node_calls.h"
#include "sparsekv/client.h"
#include "common/version.h"

namespace sparsekv {
namespace {
constexpr const char* kLog = "cluster";
}  // namespace

void ClusterMember::ReplicationLoop() {
  while (true) {
    v1::ReplicateRegionRequest request;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !replicate_.empty(); });
      if (stop_) return;
      request.set_key(replicate_.front().first);
      request.set_replicas(replicate_.front().second);
      replicate_.pop_front();
    }
    const std::string& key = request.key();
    auto done = Replicate(request);
    if (!done.ok()) {
      SKV_LOG_WARN(kLog, "region '%s': %s", key, done.status().message());
    } else {
      SKV_LOG_INFO(kLog, "region '%s' is on %s", key, absl::StrJoin(done->nodes(), ", "));
    }
  }
}

absl::StatusOr<v1::ReplicateRegionResponse> ClusterMember::Replicate(const v1::ReplicateRegionRequest& request) {
  const std::string& key = request.key();
  if (request.replicas() < 1 || request.replicas() > 16) {
    return absl::InvalidArgumentError(absl::StrFormat("replicas %d: want 1 to 16", request.replicas()));
  }
  if (!registered_.load()) return Unavailable(absl::StrFormat("replicating region '%s'", key));
  v1::GetRegionRequest get;
  get.set_key(key);
  auto local = table_->Get(get);
  if (!local.ok()) return local.status();
  if (!local->sealed()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("region '%s' is not sealed: only sealed regions are copied to other nodes", key));
  }
  auto view = ReadClusterView(etcd_.get(), keys_);
  if (!view.ok()) return view.status();
  auto kv = etcd_->Get(keys_.region(key));
  if (!kv.ok()) return kv.status();
  v1::ClusterRegionEntry entry;
  if (*kv) {
    if (auto s = FromJson((*kv)->value, (*kv)->key, &entry); !s.ok()) return s;
  }
  std::vector<std::string> holders(entry.nodes().begin(), entry.nodes().end());
  int live = 0;
  for (const auto& id : holders) {
    if (view->Find(id) != nullptr && !(request.exclude_self() && id == options_.node_id)) ++live;
  }
  std::vector<std::string> exclude = holders;
  exclude.push_back(options_.node_id);
  const auto ranked =
      RankNodes(key, view->nodes, RegionShape{local->geometry().layers(), local->geometry().entry_bytes(),
                                              local->committed_tokens()},
                exclude);
  v1::ReplicateRegionResponse out;
  std::vector<std::string> failures;
  for (const auto& target : ranked) {
    if (live >= request.replicas()) break;
    int64_t bytes = 0;
    auto s = CopyTo(target, key, local->checksum(), &bytes);
    std::lock_guard lock(mu_);
    if (!s.ok()) {
      ++replica_failures_;
      failures.push_back(absl::StrCat(target.id(), ": ", s.message()));
      continue;
    }
    ++replicas_copied_;
    replica_bytes_ += bytes;
    out.set_copied_bytes(out.copied_bytes() + bytes);
    ++live;
  }
  auto now = etcd_->Get(keys_.region(key));
  if (now.ok() && *now && FromJson((*now)->value, (*now)->key, &entry).ok()) {
    for (const auto& id : entry.nodes()) out.add_nodes(id);
  }
  if (live < request.replicas()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "region '%s': %d of %d copies live; no more nodes could take one (%d candidates%s%s)", key, live,
        request.replicas(), ranked.size(), failures.empty() ? "" : ": ", absl::StrJoin(failures, "; ")));
  }
  return out;
}

absl::Status ClusterMember::CopyTo(const v1::ClusterNode& target, const std::string& key, uint64_t checksum,
                                   int64_t* bytes) {
  // A lease on the local copy for the time of the copy: it cannot be evicted meanwhile.
  v1::OpenRegionRequest open;
  open.set_key(key);
  auto opened = table_->Open(open);
  if (!opened.ok()) return opened.status();
  struct Release {
    RegionTable* table;
    uint64_t lease;
    ~Release() {
      v1::ReleaseLeasesRequest r;
      r.add_lease_ids(lease);
      (void)table->Release(r);
    }
  } release{table_, opened->lease().lease_id()};
  const auto& info = opened->info();
  const auto& g = info.geometry();
  ClientOptions options;
  options.server = target.control();
  options.token = options_.token;
  options.rpc_timeout_ms = 30000;
  auto client = Client::Connect(options);
  if (!client.ok()) return client.status();
  RegionSpec spec;
  spec.key = key;
  spec.layers = g.layers();
  spec.entry_bytes = g.entry_bytes();
  spec.capacity_tokens = std::max<int64_t>(1, info.committed_tokens());
  auto region = NodeCalls::CreateReplica(**client, spec, options_.node_id);
  if (!region.ok()) return region.status();
  const std::byte* pool = table_->pool()->base();
  const int64_t committed = info.committed_tokens();
  const int64_t chunk = std::max<int64_t>(1, (int64_t{8} << 20) / g.entry_bytes());
  std::vector<std::byte> buffer(static_cast<size_t>(std::min(chunk, std::max<int64_t>(committed, 1)) * g.entry_bytes()));
  for (int32_t layer = 0; layer < g.layers(); ++layer) {
    const auto& pages = opened->layers(layer).pages();
    for (int64_t first = 0; first < committed; first += chunk) {
      const int64_t n = std::min(chunk, committed - first);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t t = first + i;
        const std::byte* src =
            pool + EntryPoolOffset<int64_t>(pages[PageOfToken<int64_t>(t, g.tokens_per_page())], t, g.tokens_per_page(),
                                            g.entry_stride_bytes(), g.page_bytes());
        std::memcpy(buffer.data() + i * g.entry_bytes(), src, g.entry_bytes());
      }
      if (auto s = (*region)->Write(layer, first, absl::MakeConstSpan(buffer.data(), n * g.entry_bytes())); !s.ok()) {
        (void)(*client)->Delete(key);
        return s;
      }
      *bytes += n * g.entry_bytes();
    }
  }
  if (auto s = (*region)->Commit(committed); !s.ok()) return s;
  if (auto s = (*region)->Seal(); !s.ok()) return s;
  auto listed = (*client)->List(key);
  if (!listed.ok()) return listed.status();
  bool same = false;
  for (const auto& r : *listed) same |= r.key == key && r.checksum == checksum;
  if (!same) {
    (void)(*client)->Delete(key);
    return absl::DataLossError(absl::StrFormat("the copy of region '%s' on %s has another checksum: deleted", key,
                                               target.id()));
  }
  // List the copy (compare-and-swap: the entry may change meanwhile).
  auto listed_copy = EditEntry(key, [&](v1::ClusterRegionEntry* entry, bool exists) -> absl::StatusOr<EntryChange> {
    if (!exists) return absl::NotFoundError(absl::StrFormat("region '%s' left the directory while it was copied", key));
    if (Lists(*entry, target.id())) return EntryChange::kNone;
    entry->add_nodes(target.id());
    return EntryChange::kPut;
  });
  if (listed_copy.code() == absl::StatusCode::kNotFound) (void)(*client)->Delete(key);
  return listed_copy;
}

}  // namespace sparsekv
