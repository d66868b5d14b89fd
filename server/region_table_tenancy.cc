// RegionTable: tenancy: each tenant's policy (quota, guarantee, region limit), its arena's page
// range, and what it uses.
#include "server/region_table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "common/checksum.h"
#include "common/host_id.h"
#include "common/log.h"
#include "common/size_parse.h"

namespace sparsekv {

void RegionTable::SetTenants(std::map<std::string, TenantPolicy> policies) {
  absl::MutexLock lock(&mu_);
  tenants_enabled_ = true;
  tenants_ = std::move(policies);
}

void RegionTable::SetArenas(std::map<std::string, Arena> arenas, uint32_t shared_pages) {
  absl::MutexLock lock(&mu_);
  arenas_ = std::move(arenas);
  shared_pages_ = shared_pages;
}

std::pair<uint32_t, uint32_t> RegionTable::PageRangeLocked(const std::string& tenant) const {
  if (auto it = arenas_.find(tenant); it != arenas_.end() && !tenant.empty()) return {it->second.lo, it->second.hi};
  return {0, shared_pages_ > 0 ? shared_pages_ : allocator_.total_pages()};
}

std::string RegionTable::TenantOfLocked(const std::string& key) const {
  if (!tenants_enabled_) return "";
  return key.substr(0, key.find('/'));
}

RegionTable::TenantUsage RegionTable::UsageOfLocked(const std::string& tenant) const {
  TenantUsage u;
  for (const auto& [key, region] : regions_) {
    if (TenantOfLocked(key) != tenant) continue;
    u.bytes += region->page_count() * page_bytes_;
    u.regions++;
  }
  return u;
}

std::map<std::string, RegionTable::TenantUsage> RegionTable::UsageByTenant() {
  absl::MutexLock lock(&mu_);
  std::map<std::string, TenantUsage> out;
  for (const auto& [name, policy] : tenants_) out[name];
  for (const auto& [key, region] : regions_) {
    TenantUsage& u = out[TenantOfLocked(key)];
    u.bytes += region->page_count() * page_bytes_;
    u.regions++;
  }
  return out;
}

}  // namespace sparsekv
