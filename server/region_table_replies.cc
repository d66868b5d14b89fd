// RegionTable: filling replies (RegionInfo, OpenRegionResponse) and snapshots of a region.
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

void RegionTable::FillInfoLocked(const Region& r, Clock::time_point now, v1::RegionInfo* info) const {
  info->set_key(r.key);
  info->set_region_id(r.id);
  auto* g = info->mutable_geometry();
  g->set_layers(r.geometry.layers);
  g->set_entry_bytes(r.geometry.entry_bytes);
  g->set_entry_stride_bytes(r.geometry.entry_stride_bytes);
  g->set_tokens_per_page(r.geometry.tokens_per_page);
  g->set_page_bytes(r.geometry.page_bytes);
  info->set_capacity_tokens(r.capacity_tokens);
  info->set_committed_tokens(r.committed_tokens);
  info->set_sealed(r.sealed);
  info->set_bytes(r.page_count() * page_bytes_);
  info->set_created_unix_ms(r.created_unix_ms);
  info->set_last_access_unix_ms(
      UnixMillisNow() - std::chrono::duration_cast<std::chrono::milliseconds>(now - r.last_access).count());
  info->set_ttl_ms(r.ttl_ms);
  int32_t live = 0;
  for (const auto& [id, expiry] : r.leases) live += expiry > now ? 1 : 0;
  info->set_active_leases(live);
  info->set_has_checksum(r.has_checksum);
  info->set_checksum(r.checksum);
  info->set_has_writer(WriterAliveLocked(r, now));
}

void RegionTable::FillOpenLocked(Region* region, Clock::time_point now, v1::OpenRegionResponse* out, bool writer) {
  const uint64_t lease = GrantLeaseLocked(region, now);
  if (writer) region->writer_lease = lease;
  out->mutable_lease()->set_lease_id(lease);
  out->mutable_lease()->set_lease_ms(lease_ms());
  out->mutable_lease()->set_writer(writer);
  FillInfoLocked(*region, now, out->mutable_info());
  for (const auto& layer : region->pages) {
    out->add_layers()->mutable_pages()->Add(layer.begin(), layer.end());
  }
  const std::string tenant = TenantOfLocked(region->key);
  if (auto arena = arenas_.find(tenant); arena != arenas_.end() && !tenant.empty()) {
    *out->mutable_transport() = arena->second.transport;  // this tenant's arena only
    return;
  }
  *out->mutable_transport() = network_;
  auto* shm = out->mutable_transport()->mutable_shm();
  shm->set_fd_socket_path(pool_->client_path().empty() ? fd_socket_path_ : "");
  shm->set_path(pool_->client_path());
  shm->set_pool_bytes(shared_pages_ > 0 ? static_cast<int64_t>(shared_pages_) * page_bytes_ : pool_->size_bytes());
  shm->set_backing(BackingKindName(pool_->spec().kind));
  shm->set_pool_uuid(pool_->uuid());
  shm->set_host_id(host_id_);
}

RegionTable::RegionSnapshot RegionTable::SnapshotLocked(const Region& region) const {
  return {region.id, region.geometry, region.pages, region.committed_tokens};
}

}  // namespace sparsekv
