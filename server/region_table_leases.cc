// RegionTable: leases (read leases, the one write lease per region), renewal, release and the
// reaper that expires leases and TTLs.
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

absl::Status RegionTable::CheckLeaseIdCount(int count) const {
  if (count > limits().max_lease_ids) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d lease ids in one request; the limit is %d", count, limits().max_lease_ids));
  }
  return absl::OkStatus();
}

bool RegionTable::HasLiveLeaseLocked(const Region& region, Clock::time_point now) const {
  for (const auto& [id, expiry] : region.leases) {
    if (expiry > now) return true;
  }
  return false;
}

uint64_t RegionTable::GrantLeaseLocked(Region* region, Clock::time_point now) {
  uint64_t id = next_lease_id_++;
  region->leases[id] = now + std::chrono::milliseconds(lease_ms());
  lease_owner_[id] = region;
  return id;
}

bool RegionTable::WriterAliveLocked(const Region& region, Clock::time_point now) const {
  if (region.writer_lease == 0) return false;
  auto it = region.leases.find(region.writer_lease);
  return it != region.leases.end() && it->second > now;
}

absl::Status RegionTable::CheckWriterLocked(const Region& region, uint64_t lease_id, const char* what,
                                            Clock::time_point now) const {
  if (lease_id != 0 && lease_id == region.writer_lease && WriterAliveLocked(region, now)) return absl::OkStatus();
  if (region.sealed) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "region '%s' is sealed at %d tokens; it accepts no %s", region.key, region.committed_tokens, what));
  }
  if (lease_id != 0 && lease_id == region.writer_lease) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s of region '%s': the write lease %d has lapsed; open the region for writing again", what, region.key,
        lease_id));
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "%s of region '%s' refused: lease %d is not the region's write lease (%s); a handle from a plain open is "
      "read-only, and one writer at a time holds the write lease: the creator until it seals or releases it, "
      "then whoever opens the region for writing",
      what, region.key, lease_id, WriterAliveLocked(region, now) ? "another handle holds it" : "nobody holds it now"));
}

absl::StatusOr<v1::RenewLeasesResponse> RegionTable::Renew(const v1::RenewLeasesRequest& req,
                                                           const std::string& key_prefix) {
  if (auto s = CheckLeaseIdCount(req.lease_ids_size()); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto now = Clock::now();
  v1::RenewLeasesResponse out;
  for (uint64_t id : req.lease_ids()) {
    auto* state = out.add_leases();
    state->set_lease_id(id);
    auto owner = lease_owner_.find(id);
    if (owner != lease_owner_.end() && !absl::StartsWith(owner->second->key, key_prefix)) {
      state->set_reason(absl::StrFormat("lease %d is unknown or has expired", id));  // another tenant's
      continue;
    }
    if (owner == lease_owner_.end()) {
      auto why = revoked_.find(id);
      state->set_reason(why != revoked_.end() ? why->second.first
                        : (id >> 40) != incarnation_
                            ? absl::StrFormat("lease %d was granted before the daemon restarted; reopen the region", id)
                            : absl::StrFormat("lease %d is unknown or has expired", id));
      continue;
    }
    Region* region = owner->second;
    auto lease = region->leases.find(id);
    if (lease->second <= now) {
      state->set_reason(absl::StrFormat("lease %d on region '%s' expired before it was renewed", id, region->key));
      region->leases.erase(lease);
      lease_owner_.erase(owner);
      continue;
    }
    lease->second = now + std::chrono::milliseconds(lease_ms());
    region->last_access = now;
    state->set_valid(true);
    state->set_lease_ms(lease_ms());
    state->set_committed_tokens(region->committed_tokens);
    state->set_capacity_tokens(region->capacity_tokens);
    state->set_sealed(region->sealed);
  }
  return out;
}

absl::Status RegionTable::Release(const v1::ReleaseLeasesRequest& req, const std::string& key_prefix) {
  if (auto s = CheckLeaseIdCount(req.lease_ids_size()); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  for (uint64_t id : req.lease_ids()) {
    auto owner = lease_owner_.find(id);
    if (owner == lease_owner_.end()) continue;  // already gone: releasing is idempotent
    if (!absl::StartsWith(owner->second->key, key_prefix)) continue;  // another tenant's: ignored
    owner->second->leases.erase(id);
    lease_owner_.erase(owner);
  }
  return absl::OkStatus();
}

void RegionTable::Reap(Clock::time_point now) {
  const int64_t abandon_ms = config().abandon_ms;
  absl::MutexLock lock(&mu_);
  std::vector<Region*> expired, abandoned;
  for (auto& [key, region] : regions_) {
    for (auto it = region->leases.begin(); it != region->leases.end();) {
      if (it->second <= now) {
        revoked_[it->first] = {absl::StrFormat("lease %d on region '%s' expired", it->first, key), now};
        lease_owner_.erase(it->first);
        region->leases.erase(it++);
      } else {
        ++it;
      }
    }
    if (region->ttl_ms > 0 && now - region->last_access > std::chrono::milliseconds(region->ttl_ms)) {
      expired.push_back(region.get());
    } else if (!region->sealed && abandon_ms > 0 && region->leases.empty() &&
               now - region->last_access > std::chrono::milliseconds(abandon_ms)) {
      abandoned.push_back(region.get());
    }
  }
  for (Region* region : expired) {
    SKV_LOG_INFO("ttl", "region '%s' idle past its TTL of %d ms; deleting", region->key, region->ttl_ms);
    RemoveLocked(region, absl::StrFormat("deleted after %d ms idle (TTL)", region->ttl_ms), now);
    counters_.expired_regions++;
  }
  // An unsealed region can never be evicted, so one whose writer died would hold its memory
  // forever: once nobody has held a lease on it for abandon_ms, it goes.
  for (Region* region : abandoned) {
    SKV_LOG_WARN("abandon", "region '%s' was never sealed and nobody has held it for %d ms; deleting it",
                 region->key, abandon_ms);
    RemoveLocked(region, absl::StrFormat("deleted: unsealed and unleased for %d ms (abandoned)", abandon_ms), now);
    counters_.abandoned_regions++;
  }
  auto keep_reasons = std::chrono::milliseconds(lease_ms() * 4);
  for (auto it = revoked_.begin(); it != revoked_.end();) {
    if (now - it->second.second > keep_reasons) revoked_.erase(it++);
    else ++it;
  }
  allocator_.ReclaimExpired(now);
  if (journal_ != nullptr && journal_->WantsCompaction()) {
    if (auto s = CompactJournalLocked(); !s.ok()) SKV_LOG_ERROR("journal", "compaction failed: %s", s.message());
  }
}

}  // namespace sparsekv
