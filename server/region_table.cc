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
namespace {

constexpr int64_t kMaxTtlMs = int64_t{30} * 24 * 3600 * 1000;
constexpr int32_t kDefaultListLimit = 1000;

int64_t UnixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

thread_local std::optional<RegionTable::Shortfall> RegionTable::shortfall_;

int64_t RegionTable::Region::page_count() const {
  int64_t n = 0;
  for (const auto& layer : pages) n += static_cast<int64_t>(layer.size());
  return n;
}

RegionTable::RegionTable(const Pool* pool, const DaemonConfig& config,
                         std::unique_ptr<EvictionPolicy> policy, std::string fd_socket_path)
    : pool_(pool),
      page_bytes_(config.page_bytes),
      config_(config),
      policy_(std::move(policy)),
      fd_socket_path_(std::move(fd_socket_path)),
      host_id_(LocalHostId()),
      started_(Clock::now()),
      allocator_(static_cast<uint32_t>(pool->size_bytes() / config.page_bytes)) {
  // Lease ids carry a per-run incarnation in their high bits, so a renewal of a lease granted
  // before a restart is recognised as such.
  incarnation_ = (static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
                  static_cast<uint64_t>(getpid()) << 16) & 0xffffff;
  if (incarnation_ == 0) incarnation_ = 1;
  absl::MutexLock lock(&mu_);
  next_lease_id_ = (incarnation_ << 40) | 1;
}

v1::JournalSeal RegionTable::ToJournalSeal(const Region& r) const {
  v1::JournalSeal seal;
  seal.set_key(r.key);
  seal.set_region_id(r.id);
  seal.set_layers(r.geometry.layers);
  seal.set_entry_bytes(r.geometry.entry_bytes);
  seal.set_capacity_tokens(r.capacity_tokens);
  seal.set_committed_tokens(r.committed_tokens);
  seal.set_checksum(r.checksum);
  seal.set_ttl_ms(r.ttl_ms);
  seal.set_created_unix_ms(r.created_unix_ms);
  for (const auto& layer : r.pages) seal.add_pages()->mutable_pages()->Add(layer.begin(), layer.end());
  return seal;
}

RegionTable::RestoreReport RegionTable::Restore(const std::vector<v1::JournalSeal>& regions) {
  RestoreReport report;
  auto drop = [&](const v1::JournalSeal& seal, const std::string& why) {
    report.dropped++;
    if (report.first_problem.empty()) report.first_problem = absl::StrFormat("region '%s': %s", seal.key(), why);
    SKV_LOG_WARN("restore", "dropping region '%s': %s", seal.key(), why);
  };
  std::vector<bool> taken(allocator_.total_pages(), false);
  std::vector<uint32_t> claim;
  std::vector<std::unique_ptr<Region>> restored;
  auto now = Clock::now();
  for (const auto& seal : regions) {
    auto geometry = MakeGeometry(seal.layers(), seal.entry_bytes(), page_bytes_);
    if (!geometry.ok() || seal.pages_size() != seal.layers() || seal.committed_tokens() < 0 ||
        seal.committed_tokens() > seal.capacity_tokens() || seal.capacity_tokens() > limits().max_capacity_tokens) {
      drop(seal, "its shape no longer fits this pool's page size");
      continue;
    }
    bool pages_ok = true;
    std::vector<std::vector<uint32_t>> pages;
    for (const auto& layer : seal.pages()) {
      if (layer.pages_size() < geometry->PagesPerLayer(seal.committed_tokens())) pages_ok = false;
      for (uint32_t p : layer.pages()) {
        if (p >= taken.size() || taken[p]) pages_ok = false;
      }
      pages.emplace_back(layer.pages().begin(), layer.pages().end());
    }
    if (!pages_ok) {
      drop(seal, "its pages are outside the pool or shared with another region");
      continue;
    }
    uint64_t checksum = RegionChecksum(pool_->base(), *geometry, pages, seal.committed_tokens());
    if (checksum != seal.checksum()) {
      drop(seal, absl::StrFormat("checksum %016x at seal, %016x now: its bytes did not survive", seal.checksum(), checksum));
      continue;
    }
    auto region = std::make_unique<Region>();
    region->id = seal.region_id();
    region->key = seal.key();
    region->geometry = *geometry;
    region->capacity_tokens = seal.capacity_tokens();
    region->committed_tokens = seal.committed_tokens();
    region->sealed = true;
    region->has_checksum = true;
    region->checksum = seal.checksum();
    region->created_unix_ms = seal.created_unix_ms();
    region->last_access = now;
    region->ttl_ms = seal.ttl_ms();
    region->pages = std::move(pages);
    for (const auto& layer : region->pages) {
      for (uint32_t p : layer) {
        taken[p] = true;
        claim.push_back(p);
      }
    }
    report.restored++;
    report.restored_bytes += region->page_count() * page_bytes_;
    restored.push_back(std::move(region));
  }
  if (auto s = allocator_.ClaimAll(claim); !s.ok()) {
    SKV_LOG_ERROR("restore", "cannot claim restored pages (%s); starting empty", s.message());
    report.dropped += report.restored;
    report.restored = 0;
    report.restored_bytes = 0;
    restored.clear();
  }
  absl::MutexLock lock(&mu_);
  for (auto& region : restored) {
    next_region_id_ = std::max(next_region_id_, region->id + 1);
    std::string key = region->key;
    regions_[key] = std::move(region);
  }
  QuarantinePreviouslyHandedOut();
  return report;
}

void RegionTable::QuarantinePreviouslyHandedOut() {
  const int64_t quarantined = allocator_.QuarantinePrevious(Clock::now() + std::chrono::milliseconds(lease_ms()));
  if (quarantined > 0) {
    SKV_LOG_INFO("restore", "%d pages quarantined for %d ms: clients of the previous run may still read them",
                 quarantined, lease_ms());
  }
}

namespace {
constexpr char kPageMapMagic[8] = {'S', 'K', 'V', 'P', 'M', 'A', 'P', '1'};
constexpr size_t kPageMapHeader = 16;  // magic, u64 pages
}  // namespace

absl::StatusOr<bool> RegionTable::AttachPageMap(const std::string& path) {
  const uint64_t pages = allocator_.total_pages();
  const size_t bytes = kPageMapHeader + pages;
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrFormat("cannot open the page map %s: %s", path, std::strerror(errno)));
  }
  struct stat st {};
  fstat(fd, &st);
  const bool same_size = static_cast<size_t>(st.st_size) == bytes;
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    int err = errno;
    close(fd);
    return absl::ResourceExhaustedError(absl::StrFormat("cannot size the page map %s: %s", path, std::strerror(err)));
  }
  void* addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (addr == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrFormat("cannot map the page map %s: %s", path, std::strerror(err)));
  }
  auto* map = static_cast<uint8_t*>(addr);
  uint64_t recorded = 0;
  std::memcpy(&recorded, map + 8, sizeof(recorded));
  const bool valid = same_size && std::memcmp(map, kPageMapMagic, 8) == 0 && recorded == pages;
  std::vector<uint8_t> previous;
  if (valid) previous.assign(map + kPageMapHeader, map + bytes);
  std::memcpy(map, kPageMapMagic, 8);
  std::memcpy(map + 8, &pages, sizeof(pages));
  allocator_.AttachHandedOutMap(map + kPageMapHeader, std::move(previous));
  page_map_ = map;
  page_map_bytes_ = bytes;
  return valid;
}

RegionTable::~RegionTable() {
  if (page_map_ != nullptr) munmap(page_map_, page_map_bytes_);
}

void RegionTable::SetWriteGate(WriteGate* gate) {
  absl::MutexLock lock(&mu_);
  gate_ = gate;
  for (const auto& [key, region] : regions_) {
    if (region->sealed) continue;
    for (const auto& layer : region->pages) gate_->Open(layer);
  }
}

absl::Status RegionTable::AttachJournal(RegionJournal* journal, const v1::JournalPool& pool) {
  absl::MutexLock lock(&mu_);
  journal_ = journal;
  journal_pool_ = pool;
  return CompactJournalLocked();
}

absl::Status RegionTable::CompactJournalLocked() {
  std::vector<v1::JournalSeal> live;
  for (const auto& [key, region] : regions_) {
    if (region->has_checksum) live.push_back(ToJournalSeal(*region));
  }
  return journal_->Rewrite(journal_pool_, live);
}

Limits RegionTable::limits() const {
  absl::MutexLock lock(&config_mu_);
  return config_.limits;
}

int64_t RegionTable::lease_ms() const {
  absl::MutexLock lock(&config_mu_);
  return config_.lease_ms;
}

DaemonConfig RegionTable::config() const {
  absl::MutexLock lock(&config_mu_);
  return config_;
}

void RegionTable::ApplyRuntimeConfig(const DaemonConfig& next) {
  absl::MutexLock lock(&config_mu_);
  config_.limits = next.limits;
  config_.lease_ms = next.lease_ms;
  config_.abandon_ms = next.abandon_ms;
  config_.log_level = next.log_level;
}

void RegionTable::SetDraining(bool draining) { draining_.store(draining); }

void RegionTable::SetNetworkTransports(const v1::TransportDescriptor& network, std::vector<std::string> paths) {
  absl::MutexLock lock(&mu_);
  data_paths_ = std::move(paths);
  network_ = network;
  network_.clear_shm();
}
bool RegionTable::draining() const { return draining_.load(); }

absl::Status RegionTable::ValidateKey(const std::string& key) const {
  if (key.empty()) return absl::InvalidArgumentError("region key is empty");
  if (key.size() > static_cast<size_t>(limits().max_key_bytes)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region key of %d bytes is longer than the limit of %d bytes", key.size(),
        limits().max_key_bytes));
  }
  for (unsigned char c : key) {
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "region key '%s' contains control character 0x%02x", absl::CHexEscape(key), c));
    }
  }
  return absl::OkStatus();
}

absl::Status RegionTable::CheckLeaseIdCount(int count) const {
  if (count > limits().max_lease_ids) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d lease ids in one request; the limit is %d", count, limits().max_lease_ids));
  }
  return absl::OkStatus();
}

absl::StatusOr<RegionTable::Region*> RegionTable::FindLocked(const std::string& key) {
  if (auto s = ValidateKey(key); !s.ok()) return s;
  auto it = regions_.find(key);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrFormat("region '%s' does not exist", key));
  }
  return it->second.get();
}

bool RegionTable::HasLiveLeaseLocked(const Region& region, Clock::time_point now) const {
  for (const auto& [id, expiry] : region.leases) {
    if (expiry > now) return true;
  }
  return false;
}

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
      UnixMillis() - std::chrono::duration_cast<std::chrono::milliseconds>(now - r.last_access).count());
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

absl::Status RegionTable::ValidateCreate(const v1::CreateRegionRequest& req) {
  if (auto s = ValidateKey(req.key()); !s.ok()) return s;
  const Limits lim = limits();
  if (req.layers() <= 0 || req.layers() > lim.max_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s': layers must be in [1, %d], got %d", req.key(), lim.max_layers, req.layers()));
  }
  if (req.entry_bytes() <= 0 || req.entry_bytes() > lim.max_entry_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s': entry_bytes must be in [1, %d], got %d", req.key(), lim.max_entry_bytes,
        req.entry_bytes()));
  }
  if (req.capacity_tokens() < 0 || req.capacity_tokens() > lim.max_capacity_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s': capacity_tokens must be in [0, %d], got %d", req.key(),
        lim.max_capacity_tokens, req.capacity_tokens()));
  }
  if (req.ttl_ms() < 0 || req.ttl_ms() > kMaxTtlMs) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s': ttl_ms must be in [0, %d] (0: no TTL), got %d", req.key(), kMaxTtlMs,
        req.ttl_ms()));
  }
  auto geometry = MakeGeometry(req.layers(), req.entry_bytes(), page_bytes_);
  if (!geometry.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("region '", req.key(), "': ", geometry.status().message()));
  }
  const int64_t pages_needed = geometry->PagesPerLayer(req.capacity_tokens()) * req.layers();
  if (pages_needed > allocator_.total_pages()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "region '%s' needs %s for %d tokens x %d layers, more than the whole pool (%s)", req.key(),
        FormatBytes(pages_needed * page_bytes_), req.capacity_tokens(), req.layers(),
        FormatBytes(pool_->size_bytes())));
  }

  if (draining()) {
    return absl::UnavailableError(absl::StrFormat(
        "region '%s': this daemon is draining and accepts no new regions; existing regions stay "
        "readable", req.key()));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::OpenRegionResponse> RegionTable::Create(const v1::CreateRegionRequest& req,
                                                           Clock::time_point deadline) {
  if (auto s = ValidateCreate(req); !s.ok()) return s;
  const Limits lim = limits();
  auto geometry = MakeGeometry(req.layers(), req.entry_bytes(), page_bytes_);
  int64_t pages_needed = geometry->PagesPerLayer(req.capacity_tokens()) * req.layers();
  return RetryUntilDeadline(deadline, [&]() -> absl::StatusOr<v1::OpenRegionResponse> {
  absl::MutexLock lock(&mu_);
  auto now = Clock::now();
  if (regions_.contains(req.key())) {
    return absl::AlreadyExistsError(absl::StrFormat("region '%s' already exists", req.key()));
  }
  if (static_cast<int64_t>(regions_.size()) >= lim.max_regions) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "region '%s': the daemon already holds the maximum of %d regions", req.key(), lim.max_regions));
  }
  if (tenants_enabled_) {
    const std::string tenant = TenantOfLocked(req.key());
    auto policy = tenants_.find(tenant);
    if (policy != tenants_.end() && policy->second.max_regions > 0 &&
        UsageOfLocked(tenant).regions >= policy->second.max_regions) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "region '%s': tenant '%s' already holds its limit of %d regions", req.key(), tenant,
          policy->second.max_regions));
    }
  }
  auto region = std::make_unique<Region>();
  region->id = next_region_id_++;
  region->key = req.key();
  region->geometry = *geometry;
  region->created_unix_ms = UnixMillis();
  region->last_access = now;
  region->ttl_ms = req.ttl_ms();
  region->pages.resize(req.layers());
  if (auto s = GrowLocked(region.get(), req.capacity_tokens(), now); !s.ok()) return s;
  region->capacity_tokens = req.capacity_tokens();
  Region* r = region.get();
  regions_[req.key()] = std::move(region);
  counters_.creates++;
  v1::OpenRegionResponse out;
  FillOpenLocked(r, now, &out, /*writer=*/true);
  return out;
  });
}

absl::StatusOr<v1::OpenRegionResponse> RegionTable::Open(const v1::OpenRegionRequest& req) {
  absl::MutexLock lock(&mu_);
  auto region = FindLocked(req.key());
  if (!region.ok()) return region.status();
  auto now = Clock::now();
  if (req.for_write()) {
    if ((*region)->sealed) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "region '%s' is sealed at %d tokens and takes no writer; open it without for_write to read it",
          req.key(), (*region)->committed_tokens));
    }
    if (WriterAliveLocked(**region, now) && (*region)->writer_lease != req.replaces_lease_id()) {
      auto expiry = (*region)->leases[(*region)->writer_lease];
      return absl::FailedPreconditionError(absl::StrFormat(
          "region '%s' is held for writing by another handle (lease %d, which lapses in %d ms unless renewed); "
          "it must seal, release the write lease, or lapse first",
          req.key(), (*region)->writer_lease,
          std::chrono::duration_cast<std::chrono::milliseconds>(expiry - now).count()));
    }
  }
  (*region)->last_access = now;
  v1::OpenRegionResponse out;
  FillOpenLocked(*region, now, &out, req.for_write());
  return out;
}

absl::StatusOr<v1::ExtendRegionResponse> RegionTable::Extend(const v1::ExtendRegionRequest& req,
                                                             Clock::time_point deadline) {
  return RetryUntilDeadline(deadline, [&]() -> absl::StatusOr<v1::ExtendRegionResponse> {
  absl::MutexLock lock(&mu_);
  auto found = FindLocked(req.key());
  if (!found.ok()) return found.status();
  Region* region = *found;
  if (region->sealed) {
    return absl::FailedPreconditionError(absl::StrFormat("region '%s' is sealed and cannot grow", req.key()));
  }
  if (auto s = CheckWriterLocked(*region, req.lease_id(), "extension", Clock::now()); !s.ok()) return s;
  if (req.capacity_tokens() > limits().max_capacity_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s': capacity_tokens %d is past the limit of %d", req.key(), req.capacity_tokens(),
        limits().max_capacity_tokens));
  }
  if (req.capacity_tokens() < region->capacity_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s': cannot shrink capacity from %d to %d tokens", req.key(),
        region->capacity_tokens, req.capacity_tokens()));
  }
  auto now = Clock::now();
  if (auto s = GrowLocked(region, req.capacity_tokens(), now); !s.ok()) return s;
  region->capacity_tokens = req.capacity_tokens();
  region->last_access = now;
  v1::ExtendRegionResponse out;
  FillInfoLocked(*region, now, out.mutable_info());
  for (const auto& layer : region->pages) {
    out.add_layers()->mutable_pages()->Add(layer.begin(), layer.end());
  }
  return out;
  });
}

absl::StatusOr<v1::CommitRegionResponse> RegionTable::Commit(const v1::CommitRegionRequest& req) {
  RegionSnapshot snapshot;
  {
    absl::MutexLock lock(&mu_);
    auto found = FindLocked(req.key());
    if (!found.ok()) return found.status();
    Region* region = *found;
    if (region->sealed) {
      if (req.committed_tokens() == region->committed_tokens && req.seal()) {
        // Sealing twice at the same length is harmless and makes retries safe.
        v1::CommitRegionResponse out;
        FillInfoLocked(*region, Clock::now(), out.mutable_info());
        return out;
      }
      return absl::FailedPreconditionError(absl::StrFormat(
          "region '%s' is sealed at %d tokens; it accepts no more commits", req.key(),
          region->committed_tokens));
    }
    if (auto s = CheckWriterLocked(*region, req.lease_id(), req.seal() ? "seal" : "commit", Clock::now()); !s.ok()) {
      return s;
    }
    if (req.committed_tokens() > region->capacity_tokens) {
      return absl::OutOfRangeError(absl::StrFormat(
          "region '%s': cannot commit %d tokens, capacity is %d", req.key(), req.committed_tokens(),
          region->capacity_tokens));
    }
    if (req.committed_tokens() < region->committed_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "region '%s': committed length only grows; it is %d, asked for %d", req.key(),
          region->committed_tokens, req.committed_tokens()));
    }
    auto now = Clock::now();
    region->committed_tokens = req.committed_tokens();
    region->sealed = req.seal();
    region->last_access = now;
    if (!req.seal()) {
      v1::CommitRegionResponse out;
      FillInfoLocked(*region, now, out.mutable_info());
      return out;
    }
    // Sealed: the write lease ends, and the data path takes no more writes to these pages. Closing
    // the gate waits for a write in progress, so the checksum below covers the final bytes.
    region->writer_lease = 0;
    if (gate_ != nullptr) {
      for (const auto& layer : region->pages) gate_->Close(layer);
    }
    snapshot = SnapshotLocked(*region);
  }
  // Hash outside the lock: a large region takes a while, and a sealed region no longer changes.
  uint64_t checksum = RegionChecksum(pool_->base(), snapshot.geometry, snapshot.pages, snapshot.committed_tokens);
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(req.key());
  if (it == regions_.end() || it->second->id != snapshot.id) {
    return absl::NotFoundError(absl::StrFormat("region '%s' was deleted while it was being sealed", req.key()));
  }
  it->second->has_checksum = true;
  it->second->checksum = checksum;
  if (journal_ != nullptr) {
    if (auto s = journal_->AppendSeal(ToJournalSeal(*it->second)); !s.ok()) {
      SKV_LOG_ERROR("journal", "region '%s' will not survive a restart: %s", req.key(), s.message());
    }
  }
  v1::CommitRegionResponse out;
  FillInfoLocked(*it->second, Clock::now(), out.mutable_info());
  return out;
}

void RegionTable::SetObserver(RegionObserver* observer) {
  absl::MutexLock lock(&mu_);
  observer_ = observer;
}

std::vector<v1::RegionInfo> RegionTable::AllRegions() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::RegionInfo> out;
  out.reserve(regions_.size());
  const auto now = Clock::now();
  for (const auto& [key, region] : regions_) FillInfoLocked(*region, now, &out.emplace_back());
  return out;
}

RegionTable::RegionSnapshot RegionTable::SnapshotLocked(const Region& region) const {
  return {region.id, region.geometry, region.pages, region.committed_tokens};
}

absl::StatusOr<v1::VerifyRegionResponse> RegionTable::Verify(const v1::VerifyRegionRequest& req) {
  RegionSnapshot snapshot;
  uint64_t sealed_checksum = 0;
  {
    absl::MutexLock lock(&mu_);
    auto found = FindLocked(req.key());
    if (!found.ok()) return found.status();
    if (!(*found)->has_checksum) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "region '%s' is not sealed; only sealed regions have a checksum to verify", req.key()));
    }
    snapshot = SnapshotLocked(**found);
    sealed_checksum = (*found)->checksum;
  }
  uint64_t now_checksum = RegionChecksum(pool_->base(), snapshot.geometry, snapshot.pages, snapshot.committed_tokens);
  const int64_t bytes = snapshot.committed_tokens * snapshot.geometry.layers * snapshot.geometry.entry_bytes;
  if (now_checksum != sealed_checksum) {
    SKV_LOG_ERROR("verify", "region '%s': checksum mismatch: sealed %016x, now %016x", req.key(), sealed_checksum, now_checksum);
    return absl::DataLossError(absl::StrFormat(
        "region '%s' changed since it was sealed: checksum %016x at seal, %016x now (%d bytes checked)",
        req.key(), sealed_checksum, now_checksum, bytes));
  }
  v1::VerifyRegionResponse out;
  out.set_checksum(now_checksum);
  out.set_bytes_checked(bytes);
  return out;
}

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

absl::StatusOr<v1::DeleteRegionResponse> RegionTable::Delete(const v1::DeleteRegionRequest& req) {
  absl::MutexLock lock(&mu_);
  auto found = FindLocked(req.key());
  if (!found.ok()) return found.status();
  auto now = Clock::now();
  bool held = HasLiveLeaseLocked(**found, now);
  v1::DeleteRegionResponse out;
  out.set_freed_bytes(RemoveLocked(*found, "deleted", now));
  out.set_memory_held_by_leases(held);
  counters_.deletes++;
  return out;
}

absl::StatusOr<v1::ListRegionsResponse> RegionTable::List(const v1::ListRegionsRequest& req) {
  if (req.limit() < 0 || req.limit() > limits().max_list) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "list limit must be in [0, %d] (0: %d), got %d", limits().max_list,
        kDefaultListLimit, req.limit()));
  }
  int32_t limit = req.limit() == 0 ? kDefaultListLimit : req.limit();
  absl::MutexLock lock(&mu_);
  auto now = Clock::now();
  std::vector<const Region*> matching;
  for (const auto& [key, region] : regions_) {
    if (key.rfind(req.key_prefix(), 0) == 0) matching.push_back(region.get());
  }
  std::sort(matching.begin(), matching.end(),
            [](const Region* a, const Region* b) { return a->key < b->key; });
  v1::ListRegionsResponse out;
  for (const Region* region : matching) {
    if (out.regions_size() >= limit) {
      out.set_truncated(true);
      break;
    }
    FillInfoLocked(*region, now, out.add_regions());
  }
  return out;
}

absl::StatusOr<v1::RegionInfo> RegionTable::Get(const v1::GetRegionRequest& req) {
  absl::MutexLock lock(&mu_);
  auto found = FindLocked(req.key());
  if (!found.ok()) return found.status();
  v1::RegionInfo info;
  FillInfoLocked(**found, Clock::now(), &info);
  return info;
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

v1::StatsResponse RegionTable::Stats() {
  absl::MutexLock lock(&mu_);
  auto now = Clock::now();
  allocator_.ReclaimExpired(now);
  v1::StatsResponse out;
  const int64_t page = page_bytes_;
  out.set_pool_bytes(static_cast<int64_t>(allocator_.total_pages()) * page);
  out.set_used_bytes(allocator_.used_pages() * page);
  out.set_free_bytes(allocator_.free_pages() * page);
  out.set_quarantined_bytes(allocator_.quarantined_pages() * page);
  out.set_page_bytes(page);
  out.set_regions(static_cast<int64_t>(regions_.size()));
  int64_t sealed = 0, leases = 0;
  for (const auto& [key, region] : regions_) {
    sealed += region->sealed ? 1 : 0;
    for (const auto& [id, expiry] : region->leases) leases += expiry > now ? 1 : 0;
  }
  out.set_sealed_regions(sealed);
  out.set_active_leases(leases);
  out.set_evictions(counters_.evictions);
  out.set_evicted_bytes(counters_.evicted_bytes);
  out.set_expired_regions(counters_.expired_regions);
  out.set_abandoned_regions(counters_.abandoned_regions);
  out.set_creates(counters_.creates);
  out.set_deletes(counters_.deletes);
  out.set_backing(BackingKindName(pool_->spec().kind));
  out.set_backing_detail(pool_->Describe());
  out.set_uptime_ms(std::chrono::duration_cast<std::chrono::milliseconds>(now - started_).count());
  out.set_lease_ms(lease_ms());
  out.set_draining(draining());
  for (const std::string& path : data_paths_) out.add_data_paths(path);
  if (tenants_enabled_) {
    for (const auto& [name, policy] : tenants_) {
      TenantUsage u = UsageOfLocked(name);
      auto* t = out.add_tenants();
      t->set_name(name);
      t->set_used_bytes(u.bytes);
      t->set_regions(u.regions);
      t->set_quota_bytes(policy.quota_bytes);
      t->set_max_regions(policy.max_regions);
      t->set_guarantee_bytes(policy.guarantee_bytes);
    }
  }
  return out;
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

template <typename Attempt>
auto RegionTable::RetryUntilDeadline(Clock::time_point deadline, Attempt attempt) -> decltype(attempt()) {
  while (true) {
    shortfall_.reset();
    auto result = attempt();
    if (result.ok() || result.status().code() != absl::StatusCode::kResourceExhausted || !shortfall_ ||
        deadline == Clock::time_point{}) {
      return result;
    }
    std::optional<Clock::time_point> wake;
    {
      absl::MutexLock lock(&mu_);
      wake = WaitWouldHelpLocked(shortfall_->pages, shortfall_->tenant, deadline);
    }
    if (!wake) return result;
    std::this_thread::sleep_until(std::min(*wake, deadline));
    if (Clock::now() >= deadline) return result;
  }
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
