// SIGHUP: the config read again and what may change at run time applied (see daemon.h).
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "server/daemon.h"

namespace sparsekv {
namespace {

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

}  // namespace

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

}  // namespace sparsekv
