#include "client/cluster_client.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/node_calls.h"
#include "common/host_id.h"
#include "common/log.h"

namespace sparsekv {

namespace {

bool Retryable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded ||
         s.code() == absl::StatusCode::kResourceExhausted;
}

NodeInfo ToInfo(const v1::ClusterNode& n) {
  NodeInfo out;
  out.id = n.id();
  out.control = n.control();
  out.zone = n.zone();
  out.pool_bytes = n.pool_bytes();
  out.free_bytes = n.free_bytes();
  out.used_bytes = n.used_bytes();
  out.regions = n.regions();
  out.active_leases = n.active_leases();
  out.draining = n.draining();
  return out;
}

}  // namespace

ClusterClient::ClusterClient(const ClientOptions& options, ClusterUrl url)
    : options_(options),
      url_(std::move(url)),
      keys_{url_.prefix()},
      etcd_(std::make_unique<EtcdClient>(url_.endpoints, std::min<int64_t>(options.rpc_timeout_ms, 3000))),
      host_id_(LocalHostId()),
      workers_(7) {
  options_.cluster.clear();
}

ClusterClient::~ClusterClient() = default;

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Make(const ClientOptions& options) {
  auto url = ParseClusterUrl(options.cluster);
  if (!url.ok()) return url.status();
  std::unique_ptr<ClusterClient> out(new ClusterClient(options, *url));
  // Fail at connect when etcd is not there at all, as a single-node client does for its daemon.
  if (auto view = out->View(0, false); !view.ok()) return view.status();
  return out;
}

absl::Status ClusterClient::EtcdDown(const absl::Status& status, const std::string& what) const {
  return absl::Status(status.code(), absl::StrFormat("cluster '%s': %s: etcd (%s) cannot be reached: %s", url_.name,
                                                     what, absl::StrJoin(url_.endpoints, ","), status.message()));
}

absl::StatusOr<ClusterView> ClusterClient::View(int64_t max_age_ms, bool stale_if_unreachable) {
  {
    absl::MutexLock lock(&mu_);
    if (max_age_ms > 0 && view_ms_ > 0 && UnixMs() - view_ms_ <= max_age_ms) return view_;
  }
  auto view = ReadClusterView(etcd_.get(), keys_);
  absl::MutexLock lock(&mu_);
  if (!view.ok()) {
    if (view_ms_ > 0 && stale_if_unreachable) return view_;  // etcd away: the last membership seen
    return EtcdDown(view.status(), "reading the nodes");
  }
  view_ = *view;
  view_ms_ = UnixMs();
  return view_;
}

absl::StatusOr<std::string> ClusterClient::Namespace() {
  {
    absl::MutexLock lock(&mu_);
    if (namespace_) return *namespace_;
  }
  auto view = View(1000, /*stale_if_unreachable=*/true);
  if (!view.ok()) return view.status();
  absl::Status last = absl::UnavailableError(absl::StrFormat("cluster '%s' has no live node", url_.name));
  for (const auto& node : view->nodes) {
    auto client = NodeClient(node);
    if (!client.ok()) {
      last = client.status();
      continue;
    }
    auto ns = NodeCalls::Namespace(**client);
    if (!ns.ok()) {
      last = ns.status();
      if (ns.status().code() == absl::StatusCode::kUnauthenticated) return last;
      continue;
    }
    absl::MutexLock lock(&mu_);
    namespace_ = *ns;
    return *ns;
  }
  return last;
}

absl::StatusOr<std::optional<v1::ClusterRegionEntry>> ClusterClient::Entry(const std::string& key, int64_t* revision) {
  auto ns = Namespace();
  if (!ns.ok()) return ns.status();
  auto kv = etcd_->Get(keys_.region(*ns + key));
  if (!kv.ok()) {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(key); it != entries_.end() && revision == nullptr) {
      return std::optional<v1::ClusterRegionEntry>(it->second);
    }
    return EtcdDown(kv.status(), absl::StrFormat("looking up region '%s'", key));
  }
  if (!*kv) {
    absl::MutexLock lock(&mu_);
    entries_.erase(key);
    return std::optional<v1::ClusterRegionEntry>();
  }
  v1::ClusterRegionEntry entry;
  if (auto s = FromJson((*kv)->value, (*kv)->key, &entry); !s.ok()) return s;
  if (revision != nullptr) *revision = (*kv)->mod_revision;
  absl::MutexLock lock(&mu_);
  entries_[key] = entry;
  return std::optional<v1::ClusterRegionEntry>(entry);
}

absl::StatusOr<Client*> ClusterClient::NodeClient(const v1::ClusterNode& node) {
  std::map<void*, size_t> buffers;
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(node.id());
    if (it != nodes_.end() && it->second.control == node.control()) return it->second.client.get();
    buffers = buffers_;
  }
  ClientOptions options = options_;
  options.server = node.control();
  const int64_t connect = options.connect_timeout_ms > 0 ? options.connect_timeout_ms : options.rpc_timeout_ms;
  options.connect_timeout_ms = std::min<int64_t>(connect, 2000);
  auto client = Client::Connect(options);
  if (!client.ok()) {
    return absl::Status(client.status().code(),
                        absl::StrFormat("node %s (%s): %s", node.id(), node.control(), client.status().message()));
  }
  for (const auto& [addr, bytes] : buffers) {
    if (auto s = (*client)->RegisterBuffer(addr, bytes); !s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  auto& slot = nodes_[node.id()];
  if (slot.client != nullptr) {
    if (slot.control == node.control()) return slot.client.get();  // another thread won
    retired_.push_back(std::move(slot.client));
  }
  slot.control = node.control();
  slot.client = *std::move(client);
  return slot.client.get();
}

std::vector<std::pair<std::string, Client*>> ClusterClient::Connected() {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<std::string, Client*>> out;
  for (const auto& [id, node] : nodes_) out.emplace_back(id, node.client.get());
  for (const auto& client : retired_) out.emplace_back("(moved)", client.get());
  return out;
}

absl::StatusOr<std::shared_ptr<Region>> ClusterClient::Create(const RegionSpec& spec) {
  // Membership at most a second old: a node that died since costs one failed connect (2 s at
  // most), then the next-ranked node takes the region.
  auto view = View(1000, /*stale_if_unreachable=*/false);
  if (!view.ok()) {
    return absl::Status(view.status().code(),
                        absl::StrFormat("cannot place region '%s': %s", spec.key, view.status().message()));
  }
  if (view->nodes.empty()) {
    // Not a full cluster: no node has registered under this name (a typo, or none started).
    return absl::UnavailableError(absl::StrFormat(
        "cannot place region '%s': no node is registered in cluster '%s' (check the cluster name, and that "
        "sparsekvd nodes run with this [cluster] url)", spec.key, url_.name));
  }
  const RegionShape shape{spec.layers, spec.entry_bytes, spec.capacity_tokens};
  auto ranked = RankNodes(spec.key, view->nodes, shape);
  if (ranked.empty()) {
    // No node has the room free now: let the nodes evict sealed regions, weighted by pool size.
    std::vector<v1::ClusterNode> by_pool = view->nodes;
    for (auto& n : by_pool) n.set_free_bytes(n.pool_bytes() >= shape.Footprint(n.page_bytes()) ? n.pool_bytes() : 0);
    ranked = RankNodes(spec.key, by_pool, shape);
  }
  if (ranked.empty()) {
    std::vector<std::string> nodes;
    for (const auto& n : view->nodes) {
      nodes.push_back(absl::StrFormat("%s: %d of %d bytes free%s", n.id(), n.free_bytes(), n.pool_bytes(),
                                      n.draining() ? ", draining" : ""));
    }
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cluster '%s': no node can hold region '%s' (%d layers x %d tokens x %d bytes)%s%s", url_.name, spec.key,
        spec.layers, spec.capacity_tokens, spec.entry_bytes, ": ", absl::StrJoin(nodes, "; ")));
  }
  absl::Status last;
  for (size_t i = 0; i < ranked.size() && i < 3; ++i) {
    auto client = NodeClient(ranked[i]);
    if (!client.ok()) {
      last = client.status();
      continue;
    }
    auto region = (*client)->Create(spec);
    if (region.ok() || !Retryable(region.status())) return region;
    // Every node shares the etcd this one cannot reach: no point asking the next.
    if (absl::StrContains(region.status().message(), "cannot reach etcd")) return region;
    last = absl::Status(region.status().code(), absl::StrFormat("node %s: %s", ranked[i].id(), region.status().message()));
  }
  return last;
}

absl::StatusOr<std::shared_ptr<Region>> ClusterClient::Open(const std::string& key, bool for_write) {
  auto entry = Entry(key);
  if (!entry.ok()) return entry.status();
  if (!*entry) return absl::NotFoundError(absl::StrFormat("no region '%s' in cluster '%s'", key, url_.name));
  auto view = View(1000, /*stale_if_unreachable=*/true);
  if (!view.ok()) return view.status();
  const auto& e = **entry;
  // Candidates: the primary only for writes and unsealed regions; else every live copy, this
  // host's first, then the least loaded.
  std::vector<const v1::ClusterNode*> live;
  std::vector<std::string> gone;
  for (int i = 0; i < e.nodes_size(); ++i) {
    if (i > 0 && (for_write || !e.sealed())) break;
    if (const auto* n = view->Find(e.nodes(i)); n != nullptr) live.push_back(n);
    else gone.push_back(e.nodes(i));
  }
  if (live.empty()) {
    // A node that just died may still be in a view up to a second old; a fresh one says for sure.
    auto fresh = View(0, false);
    std::vector<std::string> why;
    for (const auto& id : gone) why.push_back(fresh.ok() ? fresh->DescribeGone(id) : view->DescribeGone(id));
    return absl::NotFoundError(absl::StrFormat("region '%s' of cluster '%s' is lost: %s", key, url_.name,
                                               absl::StrJoin(why, "; ")));
  }
  std::stable_sort(live.begin(), live.end(),
                   [&](const v1::ClusterNode* a, const v1::ClusterNode* b) {
                     const bool la = a->host_id() == host_id_, lb = b->host_id() == host_id_;
                     if (la != lb) return la;
                     return a->active_leases() < b->active_leases();
                   });
  absl::Status last;
  for (const auto* node : live) {
    auto client = NodeClient(*node);
    if (!client.ok()) {
      last = client.status();
      continue;
    }
    auto region = for_write ? (*client)->OpenForWrite(key) : (*client)->Open(key);
    if (region.ok()) return region;
    last = absl::Status(region.status().code(), absl::StrFormat("node %s: %s", node->id(), region.status().message()));
    if (region.status().code() != absl::StatusCode::kNotFound && !Retryable(region.status())) return last;
  }
  return last;
}

absl::Status ClusterClient::Delete(const std::string& key) {
  int64_t revision = 0;
  auto entry = Entry(key, &revision);
  if (!entry.ok()) return entry.status();
  if (!*entry) return absl::NotFoundError(absl::StrFormat("no region '%s' in cluster '%s'", key, url_.name));
  auto view = View(0, false);
  if (!view.ok()) return view.status();
  bool dead = false;
  for (const auto& id : (*entry)->nodes()) {
    const auto* node = view->Find(id);
    if (node == nullptr) {
      dead = true;
      continue;
    }
    auto client = NodeClient(*node);
    if (!client.ok()) return client.status();
    // Each node removes itself from the directory entry.
    if (auto s = (*client)->Delete(key); !s.ok() && s.code() != absl::StatusCode::kNotFound) {
      return absl::Status(s.code(), absl::StrFormat("node %s: %s", id, s.message()));
    }
  }
  if (dead || (*entry)->nodes_size() == 0) {
    // Copies on nodes that are gone: the entry goes with this delete (if nobody changed it since).
    int64_t now_revision = 0;
    auto again = Entry(key, &now_revision);
    if (again.ok() && *again) {
      bool any_live = false;
      for (const auto& id : (*again)->nodes()) any_live |= view->Find(id) != nullptr;
      if (!any_live) (void)etcd_->DeleteIf(keys_.region(Namespace().value_or("") + key), now_revision);
    }
  }
  absl::MutexLock lock(&mu_);
  entries_.erase(key);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RegionInfo>> ClusterClient::List(const std::string& prefix) {
  auto ns = Namespace();
  if (!ns.ok()) return ns.status();
  auto entries = etcd_->List(keys_.region(*ns + prefix));
  if (!entries.ok()) return EtcdDown(entries.status(), "listing regions");
  auto view = View(0, false);
  if (!view.ok()) return view.status();
  std::map<std::string, v1::ClusterRegionEntry> directory;
  for (const auto& kv : *entries) {
    v1::ClusterRegionEntry e;
    if (FromJson(kv.value, kv.key, &e).ok()) directory[e.key().substr(ns->size())] = e;
  }
  std::map<std::string, RegionInfo> merged;
  for (const auto& node : view->nodes) {
    auto client = NodeClient(node);
    if (!client.ok()) return client.status();
    auto listed = (*client)->List(prefix);
    if (!listed.ok()) return absl::Status(listed.status().code(), absl::StrFormat("node %s: %s", node.id(), listed.status().message()));
    for (auto& info : *listed) {
      auto it = directory.find(info.key);
      if (it == directory.end()) continue;  // not (yet) in the directory: not a cluster region
      const bool primary = it->second.nodes_size() > 0 && it->second.nodes(0) == node.id();
      if (merged.count(info.key) == 0 || primary) {
        info.nodes.assign(it->second.nodes().begin(), it->second.nodes().end());
        merged[info.key] = std::move(info);
      }
    }
  }
  std::vector<RegionInfo> out;
  for (auto& [key, info] : merged) out.push_back(std::move(info));
  return out;
}

absl::StatusOr<PoolStats> ClusterClient::Stats() {
  auto view = View(0, false);
  if (!view.ok()) return view.status();
  PoolStats total;
  total.nodes = 0;
  for (const auto& node : view->nodes) {
    auto client = NodeClient(node);
    if (!client.ok()) return client.status();
    auto stats = (*client)->Stats();
    if (!stats.ok()) return absl::Status(stats.status().code(), absl::StrFormat("node %s: %s", node.id(), stats.status().message()));
    total.pool_bytes += stats->pool_bytes;
    total.used_bytes += stats->used_bytes;
    total.free_bytes += stats->free_bytes;
    total.quarantined_bytes += stats->quarantined_bytes;
    total.regions += stats->regions;
    total.active_leases += stats->active_leases;
    total.evictions += stats->evictions;
    total.abandoned_regions += stats->abandoned_regions;
    if (total.backing.empty()) total.backing = stats->backing;
    else if (total.backing.find(stats->backing) == std::string::npos) absl::StrAppend(&total.backing, "; ", stats->backing);
    total.nodes++;
  }
  return total;
}

absl::StatusOr<std::vector<NodeInfo>> ClusterClient::Nodes() {
  auto view = View(0, false);
  if (!view.ok()) return view.status();
  std::vector<NodeInfo> out;
  for (const auto& n : view->nodes) out.push_back(ToInfo(n));
  return out;
}

absl::Status ClusterClient::Replicate(const std::string& key, int32_t replicas) {
  auto entry = Entry(key);
  if (!entry.ok()) return entry.status();
  if (!*entry) return absl::NotFoundError(absl::StrFormat("no region '%s' in cluster '%s'", key, url_.name));
  auto view = View(0, false);
  if (!view.ok()) return view.status();
  absl::Status last = absl::NotFoundError(absl::StrFormat("region '%s': no live node holds it", key));
  for (const auto& id : (*entry)->nodes()) {
    const auto* node = view->Find(id);
    if (node == nullptr) continue;
    auto client = NodeClient(*node);
    if (!client.ok()) return client.status();
    auto done = NodeCalls::Replicate(**client, key, replicas, false);
    if (done.ok() || !Retryable(done.status())) return done.status();
    last = done.status();
  }
  return last;
}

absl::Status ClusterClient::RegisterBuffer(void* addr, size_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    buffers_[addr] = bytes;
  }
  for (const auto& [id, client] : Connected()) {
    if (auto s = client->RegisterBuffer(addr, bytes); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ClusterClient::UnregisterBuffer(void* addr) {
  {
    absl::MutexLock lock(&mu_);
    if (buffers_.erase(addr) == 0) return absl::NotFoundError(absl::StrFormat("no buffer registered at %p", addr));
  }
  for (const auto& [id, client] : Connected()) (void)client->UnregisterBuffer(addr);
  return absl::OkStatus();
}

}  // namespace sparsekv
