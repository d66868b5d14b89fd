// RegionTable: durability: the journal of sealed regions, restore after a restart, and the page
// map file that tells a restart which pages a previous run handed out.
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
constexpr char kPageMapMagic[8] = {'S', 'K', 'V', 'P', 'M', 'A', 'P', '1'};
constexpr size_t kPageMapHeader = 16;  // magic, u64 pages
}  // namespace


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

// The table owns the page map's mapping (the rest of it is released by its members).
RegionTable::~RegionTable() {
  if (page_map_ != nullptr) munmap(page_map_, page_map_bytes_);
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

}  // namespace sparsekv
