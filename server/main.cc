// sparsekvd: the sparsekv memory-pool daemon.
//
// Start-up is all or nothing: parse config, map and reserve the pool, start the descriptor
// socket and every gRPC listener, then write the ready file and log "ready". Any failure on the
// way is one clear log line and a non-zero exit. SIGTERM/SIGINT stop it cleanly.
#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <map>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <systemd/sd-daemon.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/config.h"
#include "common/grpc_tls.h"
#include "common/host_id.h"
#include "common/log.h"
#include "common/size_parse.h"
#include "common/version.h"
#include "server/auth.h"
#include "server/cluster_member.h"
#include "server/control_service.h"
#include "server/eviction.h"
#include "server/journal.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/pool.h"
#include "server/region_table.h"
#include "server/write_gate.h"
#include "server/transports/shm_server.h"
#include "server/transports/fabric_server.h"
#include "server/transports/verbs_server.h"
#include "server/transports/tcp_gather_server.h"

namespace sparsekv {
namespace {

constexpr char kLog[] = "sparsekvd";
constexpr char kPoolFdName[] = "sparsekv-pool";

std::string DefaultRuntimeDir() {
  if (geteuid() == 0) return "/run/sparsekvd";
  if (const char* xdg = getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return absl::StrCat(xdg, "/sparsekvd");
  }
  return absl::StrFormat("/tmp/sparsekvd-%d", geteuid());
}

absl::Status MakeDirs(const std::string& path) {
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0750) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(
          absl::StrFormat("cannot create runtime directory %s: %s", prefix, std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// Tells systemd (when run as a Type=notify service) what the daemon is doing. A no-op otherwise.
void Notify(const std::string& state) { sd_notify(0, state.c_str()); }
void NotifyStatus(const std::string& status) { Notify(absl::StrCat("STATUS=", status)); }

// Re-reads the config (same command line, so flags still override the file) and applies what
// may change at run time. Everything else is reported as needing a restart.
// Re-reads the tenants file: tokens, region limits and guarantees change at once; quotas are
// arena sizes and need a restart, so a file that changes one is refused whole.
void ReloadTenants(const DaemonConfig& running, const DaemonConfig& next, RegionTable* table, ControlService* service) {
  if (next.tenants_file.empty() != running.tenants_file.empty()) {
    SKV_LOG_WARN("reload", "auth.tenants_file: turning authentication on or off needs a restart");
    return;
  }
  if (next.tenants_file.empty()) return;
  auto loaded = TenantDirectory::Load(next.tenants_file);
  if (!loaded.ok()) {
    SKV_LOG_ERROR("reload", "tenants not reloaded, keeping the running tokens and limits: %s", loaded.status().message());
    return;
  }
  const auto current = service->tenants();
  std::vector<std::string> arena_changes;
  for (const auto& [name, policy] : loaded->tenants()) {
    auto it = current->tenants().find(name);
    const int64_t was = it == current->tenants().end() ? 0 : it->second.quota_bytes;
    if (policy.quota_bytes != was) arena_changes.push_back(name);
  }
  for (const auto& [name, policy] : current->tenants()) {
    if (policy.quota_bytes > 0 && !loaded->tenants().contains(name)) arena_changes.push_back(name);
  }
  if (!arena_changes.empty()) {
    SKV_LOG_ERROR("reload", "tenants not reloaded: the quota (arena size) of %s changed, which needs a restart; "
                  "the running tokens and limits stay", absl::StrJoin(arena_changes, ", "));
    return;
  }
  table->SetTenants(loaded->tenants());
  SKV_LOG_INFO("reload", "tenants reloaded: %d tenants, %d tokens", loaded->tenants().size(), loaded->token_count());
  service->SetTenants(std::make_shared<const TenantDirectory>(*std::move(loaded)));
}

// Joins the cluster named in [cluster]: the node id, the advertised addresses, the token for peers.
absl::StatusOr<std::unique_ptr<ClusterMember>> MakeCluster(const DaemonConfig& config, const TcpGatherServer* gather,
                                                           bool fabric, bool verbs, RegionTable* table) {
  auto url = ParseClusterUrl(config.cluster_url);
  if (!url.ok()) return absl::InvalidArgumentError(absl::StrCat("cluster.url: ", url.status().message()));
  ClusterMember::Options options;
  options.url = *url;
  auto id = ClusterMember::ResolveNodeId(config.cluster_node_id, config.state_dir);
  if (!id.ok()) return id.status();
  options.node_id = *id;
  if (config.cluster_advertise.empty()) {
    if (config.listen.empty()) {
      return absl::InvalidArgumentError("cluster.url needs a TCP control plane (listen.tcp) that peers can dial");
    }
    const std::string host = config.listen.substr(0, config.listen.rfind(':'));
    if (host == "0.0.0.0" || host == "[::]" || host.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "listen.tcp %s is a wildcard: set cluster.advertise to the HOST:PORT other nodes dial", config.listen));
    }
  }
  if (gather != nullptr) options.data = absl::StrCat(gather->host(), ":", gather->port());
  options.transports.push_back("shm");
  if (gather != nullptr) options.transports.push_back("tcp-gather");
  if (fabric) options.transports.push_back("fabric");
  if (verbs) options.transports.push_back("verbs");
  options.zone = config.cluster_zone;
  options.ttl_s = config.cluster_ttl_s;
  options.refresh_ms = config.cluster_refresh_ms;
  if (!config.cluster_token_file.empty()) {
    std::ifstream in(config.cluster_token_file);
    if (!in || !std::getline(in, options.token)) {
      return absl::InvalidArgumentError(absl::StrFormat("cluster.token_file %s cannot be read", config.cluster_token_file));
    }
  }
  SKV_LOG_INFO("cluster", "node %s joins %s (lease %d s, refresh %d ms)", options.node_id, url->ToString(),
               options.ttl_s, options.refresh_ms);
  return ClusterMember::Create(std::move(options), table);
}

void Reload(const std::vector<std::string>& args, RegionTable* table, ControlService* service) {
  bool help = false;
  auto next = ParseDaemonArgs(args, &help);
  if (!next.ok()) {
    SKV_LOG_ERROR("reload", "config not reloaded, keeping the running one: %s", next.status().message());
    return;
  }
  DaemonConfig running = table->config();
  std::vector<std::string> restart;
  if (next->pool_bytes != 0 && next->pool_bytes != running.pool_bytes) restart.push_back("pool.size");
  if (next->backing != running.backing) restart.push_back("pool.backing");
  if (next->page_bytes != running.page_bytes) restart.push_back("pool.page_size");
  if (next->listen != running.listen) restart.push_back("listen.tcp");
  if (next->metrics_listen != running.metrics_listen) restart.push_back("metrics.listen");
  if (next->reap_interval_ms != running.reap_interval_ms) restart.push_back("leases.reap_interval_ms");
  if (next->tenants_file != running.tenants_file && !next->tenants_file.empty() && !running.tenants_file.empty()) {
    restart.push_back("auth.tenants_file (the path)");
  } else {
    ReloadTenants(running, *next, table, service);
  }
  table->ApplyRuntimeConfig(*next);
  SetLogLevel(next->log_level);
  SKV_LOG_INFO("reload", "applied: lease %d ms, limits %d regions / %d layers / %d-byte entries / %d tokens, log level %d%s",
               next->lease_ms, next->limits.max_regions, next->limits.max_layers, next->limits.max_entry_bytes,
               next->limits.max_capacity_tokens, static_cast<int>(next->log_level),
               restart.empty() ? "" : absl::StrCat("; changed but need a restart: ", absl::StrJoin(restart, ", ")));
}

absl::Status WriteReadyFile(const std::string& path, int port, const std::string& unix_socket,
                            const std::string& pool_socket, int metrics_port, int data_port) {
  std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp);
    out << absl::StrFormat(
        "{\"port\":%d,\"unix_socket\":\"%s\",\"pool_socket\":\"%s\",\"metrics_port\":%d,\"data_port\":%d,\"pid\":%d}\n",
        port, unix_socket, pool_socket, metrics_port, data_port, getpid());
    if (!out) return absl::FailedPreconditionError(absl::StrCat("cannot write ready file ", tmp));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot rename ready file to ", path));
  }
  return absl::OkStatus();
}

// TLS (optionally mutual) from [tls], else plaintext, which a non-loopback address must opt into.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ControlPlaneCredentials(const DaemonConfig& config) {
  if (config.tls_cert_file.empty()) {
    const std::string host = config.listen.substr(0, config.listen.rfind(':'));
    const bool loopback = host == "localhost" || host.rfind("127.", 0) == 0 || host == "[::1]";
    if (!loopback && !config.allow_plaintext_remote) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "listen.tcp = %s is not loopback and no TLS is configured: set tls.cert_file and tls.key_file, or "
          "listen.allow_plaintext_remote = true (--allow-plaintext-remote) on a network you trust", config.listen));
    }
    if (!loopback) {
      SKV_LOG_WARN(kLog, "PLAINTEXT control plane on %s (listen.allow_plaintext_remote): tokens and region keys "
                   "cross the network unencrypted", config.listen);
    }
    return grpc::InsecureServerCredentials();
  }
  auto cert = ReadPem(config.tls_cert_file, "tls.cert_file");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(config.tls_key_file, "tls.key_file");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!config.tls_client_ca_file.empty()) {
    auto ca = ReadPem(config.tls_client_ca_file, "tls.client_ca_file");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  SKV_LOG_INFO(kLog, "control plane over TLS%s on %s",
               config.tls_client_ca_file.empty() ? "" : " with client certificates (mutual TLS)", config.listen);
  return grpc::SslServerCredentials(options);
}

int Run(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // every thread inherits this; main sigwaits
  signal(SIGPIPE, SIG_IGN);

  std::vector<std::string> args(argv + 1, argv + argc);
  bool check_only = false;
  std::erase_if(args, [&](const std::string& a) {
    if (a != "--check-config") return false;
    check_only = true;
    return true;
  });
  bool help = false;
  auto parsed = ParseDaemonArgs(args, &help);
  if (help) {
    std::fputs(DaemonUsage().c_str(), stdout);
    return 0;
  }
  if (!parsed.ok()) {
    std::fprintf(stderr, "sparsekvd: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  DaemonConfig config = *parsed;
  auto backing = ParseBackingSpec(config.backing);
  if (!backing.ok()) {
    std::fprintf(stderr, "sparsekvd: pool.backing: %s\n", std::string(backing.status().message()).c_str());
    return 2;
  }
  if (config.runtime_dir.empty()) config.runtime_dir = DefaultRuntimeDir();
  if (config.unix_socket.empty()) config.unix_socket = absl::StrCat(config.runtime_dir, "/control.sock");
  if (check_only) {
    std::fputs(DescribeConfig(config).c_str(), stdout);
    return 0;
  }
  SetLogLevel(config.log_level);
  SKV_LOG_INFO(kLog, "sparsekvd %s starting (pid %d)%s", kVersion, getpid(),
               config.config_file.empty() ? "" : absl::StrCat(", config ", config.config_file));

  if (auto s = MakeDirs(config.runtime_dir); !s.ok()) {
    SKV_LOG_ERROR(kLog, "%s", s.message());
    return 1;
  }
  bool auto_size = config.pool_bytes == 0;
  if (auto_size) config.pool_bytes = DefaultPoolBytes(config.page_bytes);
  config.pool_bytes = config.pool_bytes / config.page_bytes * config.page_bytes;
  auto started = std::chrono::steady_clock::now();
  NotifyStatus(absl::StrFormat("reserving a %s %s pool", FormatBytes(config.pool_bytes), config.backing));
  auto last_report = started;
  auto progress = [&](int64_t done, int64_t total) {
    auto now = std::chrono::steady_clock::now();
    std::string line = absl::StrFormat("reserving pool: %s of %s (%.0f%%)", FormatBytes(done), FormatBytes(total),
                                       100.0 * done / total);
    NotifyStatus(line);
    if (now - last_report >= std::chrono::seconds(2) && done < total) {
      SKV_LOG_INFO("pool", "%s", line);
      last_report = now;
    }
  };
  // A pool descriptor systemd kept for us across a restart (FDSTORE), if any.
  int inherited_fd = -1;
  {
    char** names = nullptr;
    int n = sd_listen_fds_with_names(1, &names);
    for (int i = 0; i < n; ++i) {
      if (std::string(names[i]) == kPoolFdName && inherited_fd < 0) inherited_fd = SD_LISTEN_FDS_START + i;
      free(names[i]);
    }
    free(names);
  }
  auto pool = Pool::Create(*backing, config.pool_bytes, config.prefault, progress, inherited_fd);
  if (!pool.ok()) {
    SKV_LOG_ERROR(kLog, "pool: %s", pool.status().message());
    return 1;
  }
  SKV_LOG_INFO("pool", "backing=%s size=%s%s page=%s pages=%d prefault=%s (%.0f ms)",
               (*pool)->Describe(), FormatBytes((*pool)->size_bytes()),
               auto_size ? " (auto: 1/4 of available memory, at most 4 GiB)" : "",
               FormatBytes(config.page_bytes), (*pool)->size_bytes() / config.page_bytes,
               config.prefault ? "yes" : "no",
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());

  if ((*pool)->memory_backed()) {
    if (inherited_fd >= 0) {
      SKV_LOG_INFO("pool", "took the pool back from systemd's descriptor store");
    } else if (getenv("NOTIFY_SOCKET") != nullptr) {
      int fd = (*pool)->fd();
      if (sd_pid_notify_with_fds(0, 0, absl::StrCat("FDSTORE=1\nFDNAME=", kPoolFdName).c_str(), &fd, 1) > 0) {
        SKV_LOG_INFO("pool", "pool descriptor kept in systemd's descriptor store: a restart keeps the pool");
      }
    } else if (!config.state_dir.empty()) {
      SKV_LOG_WARN("pool", "not run under systemd: a restart loses this %s pool and every region in it "
                   "(use a file, hugetlbfs or devdax backing, or run under systemd)", (*pool)->Describe());
    }
  }

  std::unique_ptr<ShmServer> shm;
  if ((*pool)->client_path().empty()) {
    auto started_shm = ShmServer::Start(pool->get(), absl::StrCat(config.runtime_dir, "/pool.sock"));
    if (!started_shm.ok()) {
      SKV_LOG_ERROR(kLog, "shm transport: %s", started_shm.status().message());
      return 1;
    }
    shm = std::move(*started_shm);
    SKV_LOG_INFO("shm", "pool descriptor served on %s", shm->socket_path());
  } else {
    SKV_LOG_INFO("shm", "clients map the pool at %s", (*pool)->client_path());
  }

  auto policy = MakeEvictionPolicy(config.eviction_policy);
  if (!policy.ok()) {
    SKV_LOG_ERROR(kLog, "%s", policy.status().message());
    return 2;
  }
  RegionTable table(pool->get(), config, std::move(*policy), shm ? shm->socket_path() : "");
  WriteGate write_gate(static_cast<uint32_t>((*pool)->size_bytes() / config.page_bytes), config.page_bytes);
  table.SetWriteGate(&write_gate);
  Metrics metrics;
  std::shared_ptr<const TenantDirectory> tenants;
  int64_t shared_bytes = pool->get()->size_bytes();  // below the tenant arenas
  if (!config.tenants_file.empty()) {
    auto loaded = TenantDirectory::Load(config.tenants_file);
    if (!loaded.ok()) {
      SKV_LOG_ERROR(kLog, "%s", loaded.status().message());
      return 1;
    }
    tenants = std::make_shared<const TenantDirectory>(*std::move(loaded));
    table.SetTenants(tenants->tenants());
    // Data-plane isolation: every tenant with a quota gets an arena of that size with a shared-
    // memory file, fabric registrations and a gather secret of its own.
    std::vector<std::pair<std::string, int64_t>> sizes;
    for (const auto& [name, policy] : tenants->tenants()) {
      if (policy.quota_bytes <= 0) {
        SKV_LOG_WARN("auth", "tenant '%s' has no quota and so no arena: its regions share the pool's data paths "
                     "with other tenants without one", name);
        continue;
      }
      sizes.emplace_back(name, policy.quota_bytes / config.page_bytes * config.page_bytes);
    }
    if (!sizes.empty()) {
      auto split = pool->get()->SplitIntoArenas(sizes);
      if (!split.ok()) {
        SKV_LOG_ERROR(kLog, "tenant arenas: %s", split.status().message());
        return 1;
      }
      shared_bytes = pool->get()->size_bytes();
      for (const auto& a : *split) shared_bytes = std::min(shared_bytes, a.offset);
    }
    SKV_LOG_INFO("auth", "bearer tokens required: %d tenants, %d tokens from %s", tenants->tenants().size(),
                 tenants->token_count(), config.tenants_file);
  }
  ControlService service(&table, &metrics, tenants);

  v1::TransportDescriptor network;
  std::vector<std::string> data_paths = {
      absl::StrCat("shm/CXL: ", pool->get()->Describe(), " (clients on this host that can map it)")};
  std::unique_ptr<TcpGatherServer> gather;
  if (!config.data_listen.empty()) {
    auto started_gather = TcpGatherServer::Start(pool->get(), config.data_listen, &write_gate);
    if (!started_gather.ok()) {
      SKV_LOG_ERROR(kLog, "%s", started_gather.status().message());
      return 1;
    }
    gather = std::move(*started_gather);
    if (!pool->get()->arenas().empty()) gather->RequireSecrets();  // no window where arenas are open
    network.set_gather_host(gather->host());
    network.set_gather_port(gather->port());
    data_paths.push_back(absl::StrFormat("tcp-gather: server-side gather on %s:%d", gather->host(), gather->port()));
    SKV_LOG_INFO("tcp-gather", "server-side gather for clients that cannot map the pool on %s:%d",
                 gather->host(), gather->port());
  }
  // One-sided RMA through libfabric, on the host of the data listener.
  std::unique_ptr<FabricServer> fabric;
  const std::string data_host =
      config.data_listen.empty() ? std::string("127.0.0.1") : config.data_listen.substr(0, config.data_listen.rfind(':'));
  if (config.fabric_provider != "off") {
    auto started_fabric = FabricServer::Start(pool->get(), config.fabric_provider, data_host, shared_bytes);
    if (!started_fabric.ok()) {
      if (config.fabric_provider != "auto") {  // asked for by name: a start-up error
        SKV_LOG_ERROR(kLog, "%s", started_fabric.status().message());
        return 1;
      }
      SKV_LOG_WARN("fabric", "no libfabric RMA endpoint: %s", started_fabric.status().message());
      data_paths.push_back(absl::StrCat("fabric: off (", started_fabric.status().message(), ")"));
    } else {
      fabric = std::move(*started_fabric);
      *network.mutable_fabric() = fabric->descriptor();
      data_paths.push_back(absl::StrCat("fabric: ", fabric->Describe()));
      SKV_LOG_INFO("fabric", "one-sided RMA on %s; pool registered once for remote read only",
                   fabric->Describe());
    }
  }
  // Native verbs, where the host has an RDMA device.
  std::unique_ptr<VerbsServer> verbs;
  if (config.verbs != "off") {
    auto started_verbs = VerbsServer::Start(pool->get(), data_host, shared_bytes);
    if (!started_verbs.ok()) {
      if (config.verbs == "on") {
        SKV_LOG_ERROR(kLog, "transports.verbs = on: %s", started_verbs.status().message());
        return 1;
      }
      SKV_LOG_INFO("verbs", "native verbs transport off: %s", started_verbs.status().message());
      data_paths.push_back(absl::StrCat("verbs: off (", started_verbs.status().message(), ")"));
    } else {
      verbs = std::move(*started_verbs);
      *network.mutable_verbs() = verbs->descriptor();
      data_paths.push_back(absl::StrFormat("verbs: rdmacm on %s:%d, device %s", data_host, verbs->descriptor().port(),
                                           verbs->descriptor().device()));
      SKV_LOG_INFO("verbs", "rdmacm listener on %s:%d (device %s); pool registered once, rkey 0x%x", data_host,
                   verbs->descriptor().port(), verbs->descriptor().device(), verbs->descriptor().rkey());
    }
  }
  if (config.fabric_provider == "off") data_paths.push_back("fabric: off (transports.fabric_provider = off)");
  if (config.verbs == "off") data_paths.push_back("verbs: off (transports.verbs = off)");
  // Each tenant arena: its own shm socket (mode/group from the tenants file), gather secret and
  // fabric/verbs registrations; the shared data paths reach [0, shared_bytes) only.
  std::vector<std::unique_ptr<ShmServer>> arena_shm;
  std::map<std::string, RegionTable::Arena> arenas;
  if (gather != nullptr && !pool->get()->arenas().empty()) network.set_gather_secret(gather->AddArena(0, shared_bytes));
  for (const Pool::Arena& a : pool->get()->arenas()) {
    const TenantPolicy& policy = tenants->tenants().at(a.name);
    int gid = -1;
    if (!policy.socket_group.empty()) {
      group* g = getgrnam(policy.socket_group.c_str());
      if (g == nullptr) {
        SKV_LOG_ERROR(kLog, "tenants.%s.socket_group: no group '%s'", a.name, policy.socket_group);
        return 1;
      }
      gid = static_cast<int>(g->gr_gid);
    }
    const std::string uuid = absl::StrCat(pool->get()->uuid(), "/", a.name);
    auto served = ShmServer::StartArena(pool->get(), absl::StrCat(config.runtime_dir, "/arena-", a.name, ".sock"), a.fd,
                                        uuid, policy.socket_mode, gid);
    if (!served.ok()) {
      SKV_LOG_ERROR(kLog, "%s", served.status().message());
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
    if (gather != nullptr) {
      t.set_gather_host(gather->host());
      t.set_gather_port(gather->port());
      t.set_gather_secret(gather->AddArena(a.offset, a.offset + a.bytes));
    }
    if (fabric != nullptr) {
      auto d = fabric->AddArena(a.offset, a.bytes);
      if (!d.ok()) {
        SKV_LOG_ERROR(kLog, "arena %s: %s", a.name, d.status().message());
        return 1;
      }
      *t.mutable_fabric() = *d;
    }
    if (verbs != nullptr) {
      auto d = verbs->AddArena(a.offset, a.bytes);
      if (!d.ok()) {
        SKV_LOG_ERROR(kLog, "arena %s: %s", a.name, d.status().message());
        return 1;
      }
      *t.mutable_verbs() = *d;
    }
    SKV_LOG_INFO("auth", "tenant %s: arena of %s at pool offset %d, shared memory on %s (mode %04o)", a.name,
                 FormatBytes(a.bytes), a.offset, (*served)->socket_path(), policy.socket_mode);
    arena_shm.push_back(*std::move(served));
    arenas[a.name] = std::move(arena);
  }
  if (!arenas.empty()) table.SetArenas(std::move(arenas), static_cast<uint32_t>(shared_bytes / config.page_bytes));
  table.SetNetworkTransports(network, data_paths);

  std::unique_ptr<RegionJournal> journal;
  if (!config.state_dir.empty()) {
    auto opened = RegionJournal::Open(config.state_dir);
    if (!opened.ok()) {
      SKV_LOG_ERROR(kLog, "%s", opened.status().message());
      return 1;
    }
    journal = std::move(*opened);
    if (journal->torn_bytes() > 0) {
      SKV_LOG_WARN("restore", "%s: ignoring %d bytes after the last whole record (torn by a crash)",
                   journal->path(), journal->torn_bytes());
    }
    // Which pages the previous run had handed out: only those are quarantined after a restart.
    auto page_map = table.AttachPageMap(config.state_dir + "/pages.map");
    if (!page_map.ok()) {
      SKV_LOG_ERROR(kLog, "%s", page_map.status().message());
      return 1;
    }
    const auto& previous = journal->replayed_pool();
    const size_t sealed = journal->replayed_regions().size();
    std::string mismatch;
    if (!previous) mismatch = "no previous pool";
    else if (previous->backing() != config.backing) mismatch = absl::StrCat("backing changed from ", previous->backing());
    else if (previous->pool_bytes() != (*pool)->size_bytes()) mismatch = "pool size changed";
    else if (previous->page_bytes() != config.page_bytes) mismatch = "page size changed";
    else if (!(*pool)->survived()) mismatch = "the pool memory did not survive the restart";
    if (mismatch.empty()) {
      (*pool)->set_uuid(previous->pool_uuid());
      auto restore_started = std::chrono::steady_clock::now();
      NotifyStatus(absl::StrFormat("restoring and verifying %d sealed regions", sealed));
      auto report = table.Restore(journal->replayed_regions());
      SKV_LOG_INFO("restore", "restored %d sealed regions (%s), checksums verified, in %.0f ms; dropped %d%s",
                   report.restored, FormatBytes(report.restored_bytes),
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - restore_started).count(),
                   report.dropped, report.first_problem.empty() ? "" : absl::StrCat(" (", report.first_problem, ")"));
    } else {
      if (sealed > 0) SKV_LOG_WARN("restore", "%d sealed regions of the previous run are lost: %s", sealed, mismatch);
      // Same pool memory, nothing restored: clients of the previous run may still read its pages.
      if (*page_map && previous && (*pool)->survived() && previous->pool_bytes() == (*pool)->size_bytes() &&
          previous->page_bytes() == config.page_bytes) {
        table.QuarantinePreviouslyHandedOut();
      }
    }
    v1::JournalPool header;
    header.set_pool_uuid((*pool)->uuid());
    header.set_backing(config.backing);
    header.set_pool_bytes((*pool)->size_bytes());
    header.set_page_bytes(config.page_bytes);
    if (auto s = table.AttachJournal(journal.get(), header); !s.ok()) {
      SKV_LOG_ERROR(kLog, "journal: %s", s.message());
      return 1;
    }
    SKV_LOG_INFO("restore", "sealed regions are journaled to %s", journal->path());
  }

  // Cluster membership, in place before the control plane serves: every create claims its key.
  std::unique_ptr<ClusterMember> cluster;
  if (!config.cluster_url.empty()) {
    auto made = MakeCluster(config, gather.get(), fabric != nullptr, verbs != nullptr, &table);
    if (!made.ok()) {
      SKV_LOG_ERROR(kLog, "%s", made.status().message());
      return 1;
    }
    cluster = std::move(*made);
    table.SetObserver(cluster.get());
    service.SetCluster(cluster.get());
  }

  grpc::ServerBuilder builder;
  int tcp_port = 0;
  if (!config.listen.empty()) {
    auto credentials = ControlPlaneCredentials(config);
    if (!credentials.ok()) {
      SKV_LOG_ERROR(kLog, "%s", credentials.status().message());
      return 1;
    }
    builder.AddListeningPort(config.listen, *credentials, &tcp_port);
  }
  std::string unix_target;
  if (config.unix_socket != "none") {
    unlink(config.unix_socket.c_str());
    unix_target = absl::StrCat("unix:", config.unix_socket);
    builder.AddListeningPort(unix_target, grpc::InsecureServerCredentials());
  }
  // Without this gRPC binds with SO_REUSEPORT and a second daemon would silently share the port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (!config.listen.empty() && tcp_port == 0)) {
    SKV_LOG_ERROR(kLog, "cannot listen on %s%s (address in use, or not an address of this host)",
                  config.listen.empty() ? unix_target : config.listen,
                  config.listen.empty() || unix_target.empty() ? "" : absl::StrCat(" / ", unix_target));
    return 1;
  }
  if (!config.listen.empty()) {
    SKV_LOG_INFO("control", "gRPC on %s (port %d)", config.listen, tcp_port);
  }
  if (!unix_target.empty()) {
    chmod(config.unix_socket.c_str(), 0660);
    SKV_LOG_INFO("control", "gRPC on %s", unix_target);
  }
  // Registration: after the listeners, so the advertised port is the bound one.
  if (cluster != nullptr) {
    const std::string control =
        !config.cluster_advertise.empty()
            ? config.cluster_advertise
            : absl::StrCat(config.listen.substr(0, config.listen.rfind(':')), ":", tcp_port);
    SKV_LOG_INFO("cluster", "node %s advertises %s", cluster->node_id(), control);
    cluster->Run(control);
  }
  std::unique_ptr<MetricsHttpServer> metrics_http;
  if (!config.metrics_listen.empty()) {
    auto started_http = MetricsHttpServer::Start(config.metrics_listen, [&] {
      std::string text = metrics.RenderPrometheus(table.Stats());
      if (cluster != nullptr) text += cluster->Metrics();
      return text;
    });
    if (!started_http.ok()) {
      SKV_LOG_ERROR(kLog, "%s", started_http.status().message());
      server->Shutdown();
      return 1;
    }
    metrics_http = std::move(*started_http);
    SKV_LOG_INFO("metrics", "Prometheus text on http://%s:%d/metrics",
                 config.metrics_listen.substr(0, config.metrics_listen.rfind(':')), metrics_http->port());
  }
  SKV_LOG_INFO("leases", "lease %d ms; eviction policy %s; limits: %d regions, %d layers, %d-byte entries, %d tokens",
               config.lease_ms, config.eviction_policy, config.limits.max_regions, config.limits.max_layers,
               config.limits.max_entry_bytes, config.limits.max_capacity_tokens);

  std::mutex reaper_mu;
  std::condition_variable reaper_cv;
  bool stopping = false;
  // The reaper also feeds systemd's watchdog: a daemon whose region table is wedged (the reaper
  // cannot take its lock) stops feeding it and gets restarted.
  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  if (watchdog) SKV_LOG_INFO(kLog, "systemd watchdog every %.1f s", watchdog_usec / 1e6);
  std::thread reaper([&] {
    std::unique_lock lock(reaper_mu);
    auto period = std::chrono::milliseconds(config.reap_interval_ms);
    if (watchdog) period = std::min<std::chrono::milliseconds>(period, std::chrono::milliseconds(watchdog_usec / 4000));
    while (!reaper_cv.wait_for(lock, period, [&] { return stopping; })) {
      lock.unlock();
      table.Reap(std::chrono::steady_clock::now());
      if (watchdog) Notify("WATCHDOG=1");
      lock.lock();
    }
  });

  if (!config.ready_file.empty()) {
    if (auto s = WriteReadyFile(config.ready_file, tcp_port, config.unix_socket,
                                shm ? shm->socket_path() : "", metrics_http ? metrics_http->port() : 0,
                                gather ? gather->port() : 0);
        !s.ok()) {
      SKV_LOG_ERROR(kLog, "%s", s.message());
      return 1;
    }
  }
  SKV_LOG_INFO(kLog, "ready");
  std::string ready_status = absl::StrFormat("serving a %s %s pool on %s", FormatBytes((*pool)->size_bytes()),
                                             (*pool)->Describe(), config.listen.empty() ? unix_target : config.listen);
  Notify(absl::StrCat("READY=1\nSTATUS=", ready_status));

  int sig = 0;
  while (true) {
    sigwait(&signals, &sig);
    if (sig == SIGHUP) {
      Notify("RELOADING=1\nSTATUS=reloading config");
      Reload(args, &table, &service);
      Notify(absl::StrCat("READY=1\nSTATUS=", ready_status));
      continue;
    }
    break;
  }
  SKV_LOG_INFO(kLog, "%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  Notify("STOPPING=1\nSTATUS=shutting down");
  metrics_http.reset();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->Wait();
  if (cluster != nullptr) {
    table.SetObserver(nullptr);
    cluster.reset();  // leaves the cluster: its record goes at once
  }
  {
    std::lock_guard lock(reaper_mu);
    stopping = true;
  }
  reaper_cv.notify_all();
  reaper.join();
  gather.reset();
  fabric.reset();
  verbs.reset();
  shm.reset();
  if (!unix_target.empty()) unlink(config.unix_socket.c_str());
  if (!config.ready_file.empty()) unlink(config.ready_file.c_str());
  auto stats = table.Stats();
  SKV_LOG_INFO(kLog, "stopped cleanly: %d regions, %s used of %s, %d evictions", stats.regions(),
               FormatBytes(stats.used_bytes()), FormatBytes(stats.pool_bytes()), stats.evictions());
  return 0;
}

}  // namespace
}  // namespace sparsekv

int main(int argc, char** argv) { return sparsekv::Run(argc, argv); }
