// RegionTable: space: growing regions, eviction under pressure, removal, and whether waiting
// for space could help a create.
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

std::vector<EvictionCandidate> RegionTable::EvictionCandidatesLocked(Clock::time_point now) {
  std::vector<EvictionCandidate> candidates;
  for (const auto& [key, region] : regions_) {
    if (region->sealed && !HasLiveLeaseLocked(*region, now)) {
      candidates.push_back({region->key, region->page_count(), region->last_access});
    }
  }
  policy_->Order(&candidates);
  return candidates;
}

absl::Status RegionTable::MakeRoomLocked(int64_t pages, const std::string& for_what,
                                         Clock::time_point now, const std::string& tenant) {
  allocator_.ReclaimExpired(now);
  const auto [lo, hi] = PageRangeLocked(tenant);
  int64_t free_pages = allocator_.free_pages_in(lo, hi);
  if (free_pages >= pages) return absl::OkStatus();

  std::vector<EvictionCandidate> candidates = EvictionCandidatesLocked(now);
  if (!arenas_.empty()) {  // only regions of the same arena free pages this tenant can use
    std::vector<EvictionCandidate> same;
    for (auto& c : candidates) {
      if (PageRangeLocked(TenantOfLocked(c.key)) == std::make_pair(lo, hi)) same.push_back(c);
    }
    candidates = std::move(same);
  }
  if (tenants_enabled_) {
    // The tenant that needs the memory gives first; others only down to their guarantees.
    std::vector<EvictionCandidate> own, others;
    std::map<std::string, int64_t> holds;
    for (auto& c : candidates) {
      const std::string t = TenantOfLocked(c.key);
      if (t == tenant) {
        own.push_back(c);
        continue;
      }
      if (!holds.contains(t)) holds[t] = UsageOfLocked(t).bytes;
      auto policy = tenants_.find(t);
      const int64_t guarantee = policy == tenants_.end() ? 0 : policy->second.guarantee_bytes;
      if (holds[t] - c.pages * page_bytes_ >= guarantee) {
        holds[t] -= c.pages * page_bytes_;
        others.push_back(c);
      }
    }
    own.insert(own.end(), others.begin(), others.end());
    candidates = std::move(own);
  }
  int64_t evictable = 0;
  for (const auto& candidate : candidates) evictable += candidate.pages;
  if (free_pages + evictable < pages) {
    shortfall_ = Shortfall{pages - evictable, tenant};
    return absl::ResourceExhaustedError(absl::StrFormat(
        "pool exhausted: %s needs %d pages (%s); %d pages free, %d quarantined until leases "
        "expire, %d evictable in %d sealed unleased regions; pool is %s",
        for_what, pages, FormatBytes(pages * page_bytes_), free_pages,
        allocator_.quarantined_pages(), evictable, candidates.size(),
        FormatBytes(pool_->size_bytes())));
  }
  for (const auto& candidate : candidates) {
    if (free_pages >= pages) break;
    EvictLocked(regions_[candidate.key].get(), absl::StrFormat("to make room for %s", for_what), now);
    free_pages = allocator_.free_pages_in(lo, hi);
  }
  return absl::OkStatus();
}

int64_t RegionTable::EvictLocked(Region* victim, const std::string& why, Clock::time_point now) {
  SKV_LOG_INFO("evict", "evicting region '%s' (%s, %.1fs idle) %s", victim->key,
               FormatBytes(victim->page_count() * page_bytes_),
               std::chrono::duration<double>(now - victim->last_access).count(), why);
  int64_t bytes = RemoveLocked(victim, absl::StrCat("evicted ", why), now);
  counters_.evictions++;
  counters_.evicted_bytes += bytes;
  return bytes;
}

absl::Status RegionTable::GrowLocked(Region* region, int64_t tokens, Clock::time_point now) {
  const Geometry& g = region->geometry;
  int64_t have = region->pages.empty() ? 0 : static_cast<int64_t>(region->pages[0].size());
  int64_t want = g.PagesPerLayer(tokens);
  if (want <= have) return absl::OkStatus();
  int64_t needed = (want - have) * g.layers;
  const std::string tenant = TenantOfLocked(region->key);
  if (tenants_enabled_) {
    auto policy = tenants_.find(tenant);
    if (policy != tenants_.end() && policy->second.quota_bytes > 0) {
      const int64_t holds = UsageOfLocked(tenant).bytes;
      if (holds + needed * page_bytes_ > policy->second.quota_bytes) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "region '%s': tenant '%s' quota exceeded: it holds %s, this needs %s more, its quota is %s", region->key,
            tenant, FormatBytes(holds), FormatBytes(needed * page_bytes_), FormatBytes(policy->second.quota_bytes)));
      }
    }
  }
  if (auto s = MakeRoomLocked(needed, absl::StrFormat("region '%s'", region->key), now, tenant); !s.ok()) {
    return s;
  }
  std::vector<uint32_t> fresh;
  fresh.reserve(needed);
  const auto [lo, hi] = PageRangeLocked(tenant);
  if (auto s = allocator_.AllocateIn(needed, lo, hi, &fresh); !s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("region '", region->key, "': ", s.message()));
  }
  size_t next = 0;
  for (auto& layer : region->pages) {
    for (int64_t i = have; i < want; ++i) layer.push_back(fresh[next++]);
  }
  if (gate_ != nullptr && !region->sealed) gate_->Open(fresh);
  return absl::OkStatus();
}

int64_t RegionTable::RemoveLocked(Region* region, const std::string& reason, Clock::time_point now) {
  if (journal_ != nullptr && region->has_checksum) {
    if (auto s = journal_->AppendDelete(region->key, region->id); !s.ok()) {
      SKV_LOG_ERROR("journal", "removal of region '%s' not journaled: %s", region->key, s.message());
    }
  }
  Clock::time_point last_expiry = now;
  for (const auto& [id, expiry] : region->leases) {
    last_expiry = std::max(last_expiry, expiry);
    lease_owner_.erase(id);
    revoked_[id] = {absl::StrFormat("region '%s' was %s", region->key, reason), now};
  }
  std::vector<uint32_t> pages;
  pages.reserve(region->page_count());
  for (auto& layer : region->pages) pages.insert(pages.end(), layer.begin(), layer.end());
  int64_t bytes = static_cast<int64_t>(pages.size()) * page_bytes_;
  if (gate_ != nullptr) gate_->Close(pages);  // waits for a data-path write in progress
  if (last_expiry > now) {
    allocator_.FreeAfter(std::move(pages), last_expiry);
  } else {
    allocator_.Free(pages);
  }
  if (observer_ != nullptr) observer_->OnRemoved(region->key);
  regions_.erase(region->key);  // destroys *region
  return bytes;
}

absl::StatusOr<v1::EvictResponse> RegionTable::Evict(const v1::EvictRequest& req) {
  if (req.bytes() <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("evict: bytes must be positive, got %d", req.bytes()));
  }
  absl::MutexLock lock(&mu_);
  auto now = Clock::now();
  std::vector<EvictionCandidate> candidates = EvictionCandidatesLocked(now);
  v1::EvictResponse out;
  for (const auto& candidate : candidates) {
    if (out.evicted_bytes() >= req.bytes()) break;
    out.add_evicted_keys(candidate.key);
    out.set_evicted_bytes(out.evicted_bytes() + EvictLocked(regions_[candidate.key].get(), "on request", now));
  }
  return out;
}

std::optional<RegionTable::Clock::time_point> RegionTable::WaitWouldHelpLocked(int64_t pages, const std::string& tenant,
                                                                               Clock::time_point deadline) {
  const auto [lo, hi] = PageRangeLocked(tenant);
  const int64_t free_now = allocator_.free_pages_in(lo, hi);
  const int64_t released = allocator_.quarantined_until_in(deadline, lo, hi);
  auto next = allocator_.next_release();
  if (!next || *next > deadline || free_now + released < pages) return std::nullopt;
  return std::max(*next, Clock::now() + std::chrono::milliseconds(1));
}

}  // namespace sparsekv
