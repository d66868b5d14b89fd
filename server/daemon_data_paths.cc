// Start-up steps: the region table with its tenants (and the arenas their quotas carve out of the
// pool), the network data paths (tcp-gather, fabric, verbs), and each tenant arena's own paths.
#include <grp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/host_id.h"
#include "common/log.h"
#include "common/size_parse.h"
#include "server/daemon.h"
#include "server/eviction.h"

namespace sparsekv {

int Daemon::StartRegionTable() {
  const DaemonConfig& config = config_;
  auto policy = MakeEvictionPolicy(config.eviction_policy);
  if (!policy.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "%s", policy.status().message());
    return 2;
  }
  table_ = std::make_unique<RegionTable>(pool_.get(), config, std::move(*policy), shm_ ? shm_->socket_path() : "");
  write_gate_ = std::make_unique<WriteGate>(static_cast<uint32_t>(pool_->size_bytes() / config.page_bytes),
                                            config.page_bytes);
  table_->SetWriteGate(write_gate_.get());
  shared_bytes_ = pool_->size_bytes();
  if (!config.tenants_file.empty()) {
    auto loaded = TenantDirectory::Load(config.tenants_file);
    if (!loaded.ok()) {
      SKV_LOG_ERROR(kDaemonLog, "%s", loaded.status().message());
      return 1;
    }
    tenants_ = std::make_shared<const TenantDirectory>(*std::move(loaded));
    table_->SetTenants(tenants_->tenants());
    // Data-plane isolation: every tenant with a quota gets an arena of that size with a shared-
    // memory file, fabric registrations and a gather secret of its own.
    std::vector<std::pair<std::string, int64_t>> sizes;
    for (const auto& [name, tenant] : tenants_->tenants()) {
      if (tenant.quota_bytes <= 0) {
        SKV_LOG_WARN("auth", "tenant '%s' has no quota and so no arena: its regions share the pool's data paths "
                     "with other tenants without one", name);
        continue;
      }
      sizes.emplace_back(name, tenant.quota_bytes / config.page_bytes * config.page_bytes);
    }
    if (!sizes.empty()) {
      auto split = pool_->SplitIntoArenas(sizes);
      if (!split.ok()) {
        SKV_LOG_ERROR(kDaemonLog, "tenant arenas: %s", split.status().message());
        return 1;
      }
      shared_bytes_ = pool_->size_bytes();
      for (const auto& a : *split) shared_bytes_ = std::min(shared_bytes_, a.offset);
    }
    SKV_LOG_INFO("auth", "bearer tokens required: %d tenants, %d tokens from %s", tenants_->tenants().size(),
                 tenants_->token_count(), config.tenants_file);
  }
  service_ = std::make_unique<ControlService>(table_.get(), &metrics_, tenants_);
  return 0;
}

int Daemon::StartNetworkPaths() {
  const DaemonConfig& config = config_;
  data_paths_ = {absl::StrCat("shm/CXL: ", pool_->Describe(), " (clients on this host that can map it)")};
  if (!config.data_listen.empty()) {
    auto started_gather = TcpGatherServer::Start(pool_.get(), config.data_listen, write_gate_.get());
    if (!started_gather.ok()) {
      SKV_LOG_ERROR(kDaemonLog, "%s", started_gather.status().message());
      return 1;
    }
    gather_ = std::move(*started_gather);
    if (!pool_->arenas().empty()) gather_->RequireSecrets();  // no window where arenas are open
    network_.set_gather_host(gather_->host());
    network_.set_gather_port(gather_->port());
    data_paths_.push_back(absl::StrFormat("tcp-gather: server-side gather on %s:%d", gather_->host(), gather_->port()));
    SKV_LOG_INFO("tcp-gather", "server-side gather for clients that cannot map the pool on %s:%d", gather_->host(),
                 gather_->port());
  }
  // One-sided RMA through libfabric, on the host of the data listener.
  data_host_ =
      config.data_listen.empty() ? std::string("127.0.0.1") : config.data_listen.substr(0, config.data_listen.rfind(':'));
  if (config.fabric_provider != "off") {
    auto started_fabric = FabricServer::Start(pool_.get(), config.fabric_provider, data_host_, shared_bytes_);
    if (!started_fabric.ok()) {
      if (config.fabric_provider != "auto") {  // asked for by name: a start-up error
        SKV_LOG_ERROR(kDaemonLog, "%s", started_fabric.status().message());
        return 1;
      }
      SKV_LOG_WARN("fabric", "no libfabric RMA endpoint: %s", started_fabric.status().message());
      data_paths_.push_back(absl::StrCat("fabric: off (", started_fabric.status().message(), ")"));
    } else {
      fabric_ = std::move(*started_fabric);
      *network_.mutable_fabric() = fabric_->descriptor();
      data_paths_.push_back(absl::StrCat("fabric: ", fabric_->Describe()));
      SKV_LOG_INFO("fabric", "one-sided RMA on %s; pool registered once for remote read only", fabric_->Describe());
    }
  }
  // Native verbs, where the host has an RDMA device.
  if (config.verbs != "off") {
    auto started_verbs = VerbsServer::Start(pool_.get(), data_host_, shared_bytes_);
    if (!started_verbs.ok()) {
      if (config.verbs == "on") {
        SKV_LOG_ERROR(kDaemonLog, "transports.verbs = on: %s", started_verbs.status().message());
        return 1;
      }
      SKV_LOG_INFO("verbs", "native verbs transport off: %s", started_verbs.status().message());
      data_paths_.push_back(absl::StrCat("verbs: off (", started_verbs.status().message(), ")"));
    } else {
      verbs_ = std::move(*started_verbs);
      *network_.mutable_verbs() = verbs_->descriptor();
      data_paths_.push_back(absl::StrFormat("verbs: rdmacm on %s:%d, device %s", data_host_,
                                            verbs_->descriptor().port(), verbs_->descriptor().device()));
      SKV_LOG_INFO("verbs", "rdmacm listener on %s:%d (device %s); pool registered once, rkey 0x%x", data_host_,
                   verbs_->descriptor().port(), verbs_->descriptor().device(), verbs_->descriptor().rkey());
    }
  }
  if (config.fabric_provider == "off") data_paths_.push_back("fabric: off (transports.fabric_provider = off)");
  if (config.verbs == "off") data_paths_.push_back("verbs: off (transports.verbs = off)");
  return 0;
}

// Each tenant arena: its own shm socket (mode/group from the tenants file), gather secret and
// fabric/verbs registrations; the shared data paths reach [0, shared_bytes) only.
int Daemon::StartArenaPaths() {
  const DaemonConfig& config = config_;
  std::map<std::string, RegionTable::Arena> arenas;
  if (gather_ != nullptr && !pool_->arenas().empty()) network_.set_gather_secret(gather_->AddArena(0, shared_bytes_));
  for (const Pool::Arena& a : pool_->arenas()) {
    const TenantPolicy& policy = tenants_->tenants().at(a.name);
    int gid = -1;
    if (!policy.socket_group.empty()) {
      group* g = getgrnam(policy.socket_group.c_str());
      if (g == nullptr) {
        SKV_LOG_ERROR(kDaemonLog, "tenants.%s.socket_group: no group '%s'", a.name, policy.socket_group);
        return 1;
      }
      gid = static_cast<int>(g->gr_gid);
    }
    const std::string uuid = absl::StrCat(pool_->uuid(), "/", a.name);
    auto served = ShmServer::StartArena(pool_.get(), absl::StrCat(config.runtime_dir, "/arena-", a.name, ".sock"), a.fd,
                                        uuid, policy.socket_mode, gid);
    if (!served.ok()) {
      SKV_LOG_ERROR(kDaemonLog, "%s", served.status().message());
      return 1;
    }
    RegionTable::Arena arena;
    arena.lo = static_cast<uint32_t>(a.offset / config.page_bytes);
    arena.hi = static_cast<uint32_t>((a.offset + a.bytes) / config.page_bytes);
    v1::TransportDescriptor& t = arena.transport;
    auto* shm_d = t.mutable_shm();
    shm_d->set_fd_socket_path((*served)->socket_path());
    shm_d->set_pool_bytes(a.bytes);
    shm_d->set_backing("memfd");
    shm_d->set_pool_uuid(uuid);
    shm_d->set_host_id(LocalHostId());
    shm_d->set_arena_offset(a.offset);
    if (gather_ != nullptr) {
      t.set_gather_host(gather_->host());
      t.set_gather_port(gather_->port());
      t.set_gather_secret(gather_->AddArena(a.offset, a.offset + a.bytes));
    }
    if (fabric_ != nullptr) {
      auto d = fabric_->AddArena(a.offset, a.bytes);
      if (!d.ok()) {
        SKV_LOG_ERROR(kDaemonLog, "arena %s: %s", a.name, d.status().message());
        return 1;
      }
      *t.mutable_fabric() = *d;
    }
    if (verbs_ != nullptr) {
      auto d = verbs_->AddArena(a.offset, a.bytes);
      if (!d.ok()) {
        SKV_LOG_ERROR(kDaemonLog, "arena %s: %s", a.name, d.status().message());
        return 1;
      }
      *t.mutable_verbs() = *d;
    }
    SKV_LOG_INFO("auth", "tenant %s: arena of %s at pool offset %d, shared memory on %s (mode %04o)", a.name,
                 FormatBytes(a.bytes), a.offset, (*served)->socket_path(), policy.socket_mode);
    arena_shm_.push_back(*std::move(served));
    arenas[a.name] = std::move(arena);
  }
  if (!arenas.empty()) table_->SetArenas(std::move(arenas), static_cast<uint32_t>(shared_bytes_ / config.page_bytes));
  table_->SetNetworkTransports(network_, data_paths_);
  return 0;
}

}  // namespace sparsekv
