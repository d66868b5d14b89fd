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

}  // namespace

int64_t UnixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}


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

void RegionTable::SetWriteGate(WriteGate* gate) {
  absl::MutexLock lock(&mu_);
  gate_ = gate;
  for (const auto& [key, region] : regions_) {
    if (region->sealed) continue;
    for (const auto& layer : region->pages) gate_->Open(layer);
  }
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

absl::StatusOr<RegionTable::Region*> RegionTable::FindLocked(const std::string& key) {
  if (auto s = ValidateKey(key); !s.ok()) return s;
  auto it = regions_.find(key);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrFormat("region '%s' does not exist", key));
  }
  return it->second.get();
}

absl::StatusOr<RegionTable::CreatePlan> RegionTable::ValidateCreate(const v1::CreateRegionRequest& req) {
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
  return CreatePlan{*geometry, pages_needed};
}

absl::StatusOr<v1::OpenRegionResponse> RegionTable::Create(const v1::CreateRegionRequest& req,
                                                           Clock::time_point deadline) {
  auto plan = ValidateCreate(req);
  if (!plan.ok()) return plan.status();
  return Create(req, *plan, deadline);
}

absl::StatusOr<v1::OpenRegionResponse> RegionTable::Create(const v1::CreateRegionRequest& req, const CreatePlan& plan,
                                                           Clock::time_point deadline) {
  const Limits lim = limits();
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
  region->geometry = plan.geometry;
  region->created_unix_ms = UnixMillisNow();
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

}  // namespace sparsekv
