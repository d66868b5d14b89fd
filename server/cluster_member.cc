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

std::string RandomId() {
  std::random_device rd;
  return absl::StrFormat("n-%08x", static_cast<uint32_t>(rd()));
}

}  // namespace

bool Lists(const v1::ClusterRegionEntry& entry, const std::string& node) {
  return std::find(entry.nodes().begin(), entry.nodes().end(), node) != entry.nodes().end();
}

absl::StatusOr<std::string> ClusterMember::ResolveNodeId(const std::string& configured, const std::string& state_dir) {
  auto valid = [](const std::string& id) {
    if (id.empty() || id.size() > 64) return false;
    return std::all_of(id.begin(), id.end(), [](char c) { return isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; });
  };
  if (!configured.empty()) {
    if (!valid(configured)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cluster.node_id '%s': up to 64 letters, digits, '-', '_' or '.'", configured));
    }
    return configured;
  }
  if (state_dir.empty()) return RandomId();
  const std::string path = state_dir + "/node_id";
  std::ifstream in(path);
  std::string id;
  if (in && std::getline(in, id) && valid(id)) return id;
  id = RandomId();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << id << "\n";
    if (!out) return absl::InternalError(absl::StrFormat("cannot write %s: %s", tmp, std::strerror(errno)));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrFormat("cannot write %s: %s", path, std::strerror(errno)));
  }
  return id;
}

ClusterMember::ClusterMember(Options options, RegionTable* table)
    : options_(std::move(options)),
      table_(table),
      keys_{options_.url.prefix()},
      etcd_(std::make_unique<EtcdClient>(options_.url.endpoints, 2000)),
      started_unix_ms_(UnixMs()) {}

absl::StatusOr<std::unique_ptr<ClusterMember>> ClusterMember::Create(Options options, RegionTable* table) {
  return std::unique_ptr<ClusterMember>(new ClusterMember(std::move(options), table));
}

void ClusterMember::Run(const std::string& control) {
  options_.control = control;
  thread_ = std::thread([this] { Loop(); });
  replicator_ = std::thread([this] { ReplicationLoop(); });
}

ClusterMember::~ClusterMember() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (replicator_.joinable()) replicator_.join();
  if (const int64_t lease = lease_.load(); lease != 0 && registered_.load()) {
    // Leaving: the node's record goes at once instead of after the TTL.
    if (auto s = etcd_->Revoke(lease); !s.ok()) SKV_LOG_WARN(kLog, "leaving: %s", s.message());
    else SKV_LOG_INFO(kLog, "node %s left cluster %s", options_.node_id, options_.url.name);
  }
}

absl::Status ClusterMember::Unavailable(const std::string& what) const {
  std::string why;
  {
    std::lock_guard lock(mu_);
    why = last_error_;
  }
  return absl::UnavailableError(absl::StrFormat(
      "%s refused: node %s cannot reach etcd (%s) of cluster '%s'%s%s; regions already on this node keep serving",
      what, options_.node_id, absl::StrJoin(options_.url.endpoints, ","), options_.url.name, why.empty() ? "" : ": ",
      why));
}

absl::Status ClusterMember::PublishSelf() {
  v1::StatsResponse stats = table_->Stats();
  v1::ClusterNode node;
  node.set_id(options_.node_id);
  node.set_control(options_.control);
  node.set_data(options_.data);
  for (const auto& t : options_.transports) node.add_transports(t);
  node.set_pool_bytes(stats.pool_bytes());
  node.set_free_bytes(stats.free_bytes());
  node.set_used_bytes(stats.used_bytes());
  node.set_page_bytes(stats.page_bytes());
  node.set_regions(stats.regions());
  node.set_active_leases(stats.active_leases());
  node.set_backing(stats.backing());
  node.set_zone(options_.zone);
  node.set_host_id(LocalHostId());
  node.set_draining(stats.draining());
  node.set_started_unix_ms(started_unix_ms_);
  node.set_updated_unix_ms(UnixMs());
  node.set_version(kVersion);
  if (auto s = etcd_->Put(keys_.node(options_.node_id), ToJson(node), lease_.load()); !s.ok()) return s;
  return etcd_->Put(keys_.seen(options_.node_id), absl::StrCat(node.updated_unix_ms()));
}

absl::Status ClusterMember::Register() {
  auto lease = etcd_->Grant(options_.ttl_s);
  if (!lease.ok()) return lease.status();
  lease_.store(*lease);
  if (auto s = PublishSelf(); !s.ok()) return s;
  if (auto s = Reconcile(); !s.ok()) return s;
  registered_.store(true);
  return absl::OkStatus();
}

// The directory from this node's side: every local region listed, no entry listing this node for
// a region it does not hold.
absl::Status ClusterMember::Reconcile() {
  auto entries = etcd_->List(keys_.regions());
  if (!entries.ok()) return entries.status();
  std::set<std::string> local;
  int64_t republished = 0, dropped = 0;
  for (const auto& info : table_->AllRegions()) {
    local.insert(info.key());
    if (auto s = ListSelf(info.key(), &info); s.ok()) {
      ++republished;
    } else if (s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded) {
      return s;
    } else {
      SKV_LOG_WARN(kLog, "%s", s.message());
    }
  }
  std::set<std::string> claiming;
  {
    std::lock_guard lock(mu_);
    claiming = claiming_;
  }
  for (const auto& kv : *entries) {
    v1::ClusterRegionEntry entry;
    if (!FromJson(kv.value, kv.key, &entry).ok()) continue;
    if (!Lists(entry, options_.node_id) || local.count(entry.key()) > 0 || claiming.count(entry.key()) > 0) continue;
    if (auto s = UnlistSelf(entry.key()); !s.ok()) return s;
    ++dropped;
  }
  {
    std::lock_guard lock(mu_);
    resync_ = false;
    directory_entries_ = static_cast<int64_t>(entries->size());
  }
  SKV_LOG_INFO(kLog, "node %s registered in cluster %s as %s: %d regions listed, %d stale entries dropped",
               options_.node_id, options_.url.ToString(), options_.control, republished, dropped);
  return absl::OkStatus();
}

absl::Status ClusterMember::EditEntry(const std::string& key, const EntryEdit& edit) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    auto kv = etcd_->Get(keys_.region(key));
    if (!kv.ok()) return kv.status();
    const bool exists = kv->has_value();
    v1::ClusterRegionEntry entry;
    if (exists) {
      if (auto s = FromJson((*kv)->value, (*kv)->key, &entry); !s.ok()) return s;
    }
    auto change = edit(&entry, exists);
    if (!change.ok()) return change.status();
    absl::StatusOr<bool> done = true;
    if (*change == EntryChange::kNone) return absl::OkStatus();
    if (*change == EntryChange::kDelete) {
      if (exists) done = etcd_->DeleteIf(keys_.region(key), (*kv)->mod_revision);
    } else if (exists) {
      done = etcd_->Swap(keys_.region(key), (*kv)->mod_revision, ToJson(entry));
    } else {
      auto created = etcd_->Create(keys_.region(key), ToJson(entry));
      if (!created.ok()) return created.status();
      done = !created->has_value();
    }
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
  }
  return absl::AbortedError(absl::StrFormat("region '%s': directory entry kept changing; will retry", key));
}

absl::Status ClusterMember::ListSelf(const std::string& key, const v1::RegionInfo* local) {
  int32_t replicas = 0;  // > 1: copies to make once listed
  auto listed = EditEntry(key, [&](v1::ClusterRegionEntry* entry, bool exists) -> absl::StatusOr<EntryChange> {
    if (!exists) {
      entry->set_key(key);
      entry->set_created_unix_ms(local->created_unix_ms());
    }
    const bool primary = entry->nodes_size() == 0 || entry->nodes(0) == options_.node_id;
    if (!Lists(*entry, options_.node_id)) {
      if (entry->nodes_size() > 0) {
        // Someone else holds this key: join only as an identical sealed copy (a replica back after
        // a restart).
        if (!(entry->sealed() && local->sealed() && local->has_checksum() && entry->checksum() == local->checksum())) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "region '%s' here differs from the cluster's (held by %s): left out of the directory", key,
              absl::StrJoin(entry->nodes(), ",")));
        }
      }
      entry->add_nodes(options_.node_id);
    }
    if (primary) {
      entry->set_region_id(local->region_id());
      entry->set_sealed(local->sealed());
      entry->set_checksum(local->checksum());
      entry->set_bytes(local->bytes());
      entry->set_layers(local->geometry().layers());
      entry->set_entry_bytes(local->geometry().entry_bytes());
    }
    replicas = primary && local->sealed() ? entry->replicas() : 0;
    return EntryChange::kPut;
  });
  if (listed.ok() && replicas > 1) {
    {
      std::lock_guard lock(mu_);
      replicate_.emplace_back(key, replicas);
    }
    cv_.notify_all();
  }
  return listed;
}

absl::Status ClusterMember::UnlistSelf(const std::string& key) {
  return EditEntry(key, [&](v1::ClusterRegionEntry* entry, bool exists) -> absl::StatusOr<EntryChange> {
    if (!exists || !Lists(*entry, options_.node_id)) return EntryChange::kNone;
    auto* nodes = entry->mutable_nodes();
    nodes->erase(std::remove(nodes->begin(), nodes->end(), options_.node_id), nodes->end());
    return nodes->empty() ? EntryChange::kDelete : EntryChange::kPut;
  });
}

absl::Status ClusterMember::Claim(const v1::CreateRegionRequest& request) {
  if (!registered_.load()) {
    std::lock_guard lock(mu_);
    ++claims_refused_;
  }
  if (!registered_.load()) return Unavailable(absl::StrFormat("creating region '%s'", request.key()));
  {
    std::lock_guard lock(mu_);
    // One create of a key at a time on this node: a second one must not mistake the first's
    // fresh claim for a leftover of its own below.
    if (!claiming_.insert(request.key()).second) {
      return absl::AlreadyExistsError(absl::StrFormat("region '%s' already exists in cluster '%s' (on node %s)",
                                                      request.key(), options_.url.name, options_.node_id));
    }
  }
  v1::ClusterRegionEntry entry;
  entry.set_key(request.key());
  entry.add_nodes(options_.node_id);
  entry.set_replicas(std::max(1, request.replicas()));
  entry.set_created_unix_ms(UnixMs());
  entry.set_layers(request.layers());
  entry.set_entry_bytes(request.entry_bytes());
  const std::string json = ToJson(entry);
  absl::Status result;
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto existing = etcd_->Create(keys_.region(request.key()), json);
    if (!existing.ok()) {
      if (existing.status().code() == absl::StatusCode::kUnavailable ||
          existing.status().code() == absl::StatusCode::kDeadlineExceeded) {
        {
          std::lock_guard lock(mu_);
          last_error_ = std::string(existing.status().message());
        }
        result = Unavailable(absl::StrFormat("creating region '%s'", request.key()));
      } else {
        result = existing.status();
      }
      break;
    }
    if (!existing->has_value()) {
      result = absl::OkStatus();
      break;
    }
    v1::ClusterRegionEntry held;
    (void)FromJson((*existing)->value, (*existing)->key, &held);
    v1::GetRegionRequest get;
    get.set_key(request.key());
    if (held.nodes_size() == 1 && held.nodes(0) == options_.node_id && !table_->Get(get).ok()) {
      // A leftover of this node's own (its removal not yet applied): take it over.
      auto swapped = etcd_->Swap(keys_.region(request.key()), (*existing)->mod_revision, json);
      if (swapped.ok() && *swapped) {
        result = absl::OkStatus();
        break;
      }
      continue;
    }
    result = absl::AlreadyExistsError(absl::StrFormat("region '%s' already exists in cluster '%s' (on node %s)",
                                                      request.key(), options_.url.name,
                                                      absl::StrJoin(held.nodes(), ", ")));
    break;
  }
  std::lock_guard lock(mu_);
  if (result.ok()) ++claims_;
  else claiming_.erase(request.key());
  if (result.code() == absl::StatusCode::kUnavailable) ++claims_refused_;
  return result;
}

void ClusterMember::OnClaimed(const std::string& key, bool created) {
  if (!created) {
    if (auto s = UnlistSelf(key); !s.ok()) {
      SKV_LOG_WARN(kLog, "region '%s': claim not given back (%s); reconciling later", key, s.message());
      std::lock_guard lock(mu_);
      resync_ = true;
    }
  }
  std::lock_guard lock(mu_);
  claiming_.erase(key);
}

void ClusterMember::OnSealed(const v1::RegionInfo& info) {
  {
    std::lock_guard lock(mu_);
    sealed_.push_back(info);
  }
  cv_.notify_all();
}

void ClusterMember::OnRemoved(const std::string& key) {
  {
    std::lock_guard lock(mu_);
    removed_.push_back(key);
  }
  cv_.notify_all();
}

void ClusterMember::OnDeleted(const std::string& key) {
  if (!registered_.load()) return;  // reconciled when etcd is back
  if (auto s = UnlistSelf(key); !s.ok()) {
    SKV_LOG_WARN(kLog, "region '%s': not yet removed from the directory (%s); retrying", key, s.message());
    std::lock_guard lock(mu_);
    resync_ = true;
  }
}

void ClusterMember::RefreshSoon() {
  {
    std::lock_guard lock(mu_);
    refresh_now_ = true;
  }
  cv_.notify_all();
}

absl::Status ClusterMember::ApplyPending() {
  while (true) {
    std::string removed;
    std::optional<v1::RegionInfo> sealed;
    {
      std::lock_guard lock(mu_);
      if (!removed_.empty()) {
        removed = removed_.front();
      } else if (!sealed_.empty()) {
        sealed = sealed_.front();
      } else {
        return absl::OkStatus();
      }
    }
    absl::Status s;
    if (!removed.empty()) {
      v1::GetRegionRequest get;
      get.set_key(removed);
      bool claiming;
      {
        std::lock_guard lock(mu_);
        claiming = claiming_.count(removed) > 0;
      }
      // Created again here since: the entry is the new region's.
      if (!claiming && !table_->Get(get).ok()) s = UnlistSelf(removed);
    } else {
      // Only a region this node is listed for: a fresh replica is listed by the node copying it,
      // once the checksums match.
      auto kv = etcd_->Get(keys_.region(sealed->key()));
      if (!kv.ok()) {
        s = kv.status();
      } else if (*kv) {
        v1::ClusterRegionEntry entry;
        if (FromJson((*kv)->value, (*kv)->key, &entry).ok() && Lists(entry, options_.node_id)) {
          s = ListSelf(sealed->key(), &*sealed);
        }
      }
    }
    if (s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded) return s;
    if (!s.ok()) SKV_LOG_WARN(kLog, "%s", s.message());
    std::lock_guard lock(mu_);
    if (!removed.empty()) removed_.pop_front();
    else sealed_.pop_front();
  }
}

void ClusterMember::Loop() {
  using Clock = std::chrono::steady_clock;
  const auto period = std::chrono::milliseconds(options_.refresh_ms);
  const auto retry = std::min<Clock::duration>(period, std::chrono::milliseconds(500));
  auto next_refresh = Clock::now();
  bool down_logged = false;
  bool first = true;  // register at once at start-up
  auto went_down = [&](const absl::Status& s) {
    registered_.store(false);
    {
      std::lock_guard lock(mu_);
      last_error_ = std::string(s.message());
    }
    if (!down_logged) {
      SKV_LOG_WARN(kLog,
                   "node %s lost etcd (%s): regions here keep serving; cluster placements are refused until it is "
                   "back",
                   options_.node_id, s.message());
      down_logged = true;
    }
  };
  while (true) {
    {
      std::unique_lock lock(mu_);
      const auto until = registered_.load() ? next_refresh : first ? Clock::now() : Clock::now() + retry;
      first = false;
      cv_.wait_until(lock, until, [&] {
        return stop_ || refresh_now_ || (registered_.load() && (!removed_.empty() || !sealed_.empty()));
      });
      if (stop_) return;
      if (refresh_now_) {
        refresh_now_ = false;
        next_refresh = Clock::now();
      }
    }
    if (!registered_.load()) {
      if (auto s = Register(); !s.ok()) {
        went_down(s);
        continue;
      }
      if (down_logged) SKV_LOG_INFO(kLog, "node %s: etcd is back; registered again", options_.node_id);
      down_logged = false;
      {
        std::lock_guard lock(mu_);
        last_error_.clear();
      }
      next_refresh = Clock::now() + period;
      continue;
    }
    if (Clock::now() >= next_refresh) {
      next_refresh = Clock::now() + period;
      auto ttl = etcd_->KeepAlive(lease_.load());
      if (!ttl.ok()) {
        // NOT_FOUND: the lease expired while etcd was away: register afresh.
        went_down(ttl.status());
        continue;
      }
      if (auto s = PublishSelf(); !s.ok()) {
        went_down(s);
        continue;
      }
    }
    if (auto s = ApplyPending(); !s.ok()) {
      went_down(s);
      continue;
    }
    bool resync;
    {
      std::lock_guard lock(mu_);
      resync = resync_;
    }
    if (resync) {
      if (auto s = Reconcile(); !s.ok()) went_down(s);
    }
  }
}

void ClusterMember::FillStats(v1::StatsResponse* stats) {
  stats->set_node_id(options_.node_id);
  stats->set_cluster(options_.url.ToString());
  stats->set_cluster_connected(registered_.load());
  std::lock_guard lock(mu_);
  stats->set_cluster_detail(registered_.load()
                                ? absl::StrFormat("registered as %s; %d directory entries at the last reconcile",
                                                  options_.control, directory_entries_)
                                : absl::StrCat("not registered: ", last_error_.empty() ? "starting" : last_error_));
}

std::string ClusterMember::Metrics() {
  std::lock_guard lock(mu_);
  std::string out;
  auto line = [&](const char* name, const char* type, const char* help, double value) {
    absl::StrAppendFormat(&out, "# HELP %s %s\n# TYPE %s %s\n%s{node=\"%s\"} %g\n", name, help, name, type, name,
                          options_.node_id, value);
  };
  line("sparsekv_cluster_registered", "gauge", "1 while this node is registered in etcd", registered_.load() ? 1 : 0);
  line("sparsekv_cluster_directory_entries", "gauge", "directory entries at the last reconcile",
       static_cast<double>(directory_entries_));
  line("sparsekv_cluster_claims_total", "counter", "keys claimed for regions created here", static_cast<double>(claims_));
  line("sparsekv_cluster_placements_refused_total", "counter", "creates refused because etcd was unreachable",
       static_cast<double>(claims_refused_));
  line("sparsekv_cluster_replicas_copied_total", "counter", "sealed regions copied to other nodes",
       static_cast<double>(replicas_copied_));
  line("sparsekv_cluster_replica_bytes_total", "counter", "entry bytes copied to other nodes",
       static_cast<double>(replica_bytes_));
  line("sparsekv_cluster_replica_failures_total", "counter", "copies to other nodes that failed",
       static_cast<double>(replica_failures_));
  line("sparsekv_cluster_pending_directory_updates", "gauge", "removals and seals not yet in etcd",
       static_cast<double>(removed_.size() + sealed_.size()));
  return out;
}

}  // namespace sparsekv
