// RegionTable is the daemon's catalogue: which regions exist, which pages each layer holds,
// how much of each is committed, and who holds a lease on it.
//
// Invariants:
//  - keys are unique among live regions; a region id is never reused;
//  - every page is in exactly one place: a live region's page table, the allocator's free stack,
//    or the allocator's quarantine;
//  - a deleted or evicted region's pages are quarantined until its last unexpired lease ends, so
//    a client holding a stale handle can read only that region's old bytes, never another's;
//  - only sealed regions without an unexpired lease are evicted, and an allocation that cannot
//    be satisfied even after evicting every candidate evicts nothing;
//  - committed length only grows and never passes capacity; a sealed region never changes.
//
// Requests are validated against Limits; every error names what was wrong and the value.
// Thread-safe: one mutex guards the table (control plane only; fetches never reach the daemon).
#ifndef SPARSEKV_SERVER_REGION_TABLE_H_
#define SPARSEKV_SERVER_REGION_TABLE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/config.h"
#include "common/geometry.h"
#include "server/eviction.h"
#include "server/journal.h"
#include "server/page_allocator.h"
#include "server/pool.h"
#include "server/write_gate.h"
#include "server/auth.h"
#include "sparsekv/v1/control.pb.h"

namespace sparsekv {

// Told of every region that leaves the table (deleted, evicted, expired, abandoned), under the
// table's lock: an observer only records the key and returns.
class RegionObserver {
 public:
  virtual ~RegionObserver() = default;
  virtual void OnRemoved(const std::string& key) = 0;
};

// Wall-clock milliseconds since the epoch (region creation and last-access times in replies).
int64_t UnixMillisNow();

class RegionTable {
 public:
  using Clock = std::chrono::steady_clock;

  // `fd_socket_path` is where clients fetch the pool descriptor (memfd backings).
  RegionTable(const Pool* pool, const DaemonConfig& config, std::unique_ptr<EvictionPolicy> policy,
              std::string fd_socket_path);
  ~RegionTable();

  // What a valid create request will build: the region's geometry and the pages its capacity
  // needs (from ValidateCreate, consumed by Create).
  struct CreatePlan {
    Geometry geometry;
    int64_t pages = 0;
  };
  // The checks Create makes before it allocates (shape, limits, draining), with no side effect.
  absl::StatusOr<CreatePlan> ValidateCreate(const v1::CreateRegionRequest& request);
  // Create and Extend wait, until `deadline`, for quarantined pages that would make the request
  // fit (after a restart, or right after deletions) instead of failing at once. Create validates
  // the request itself, or takes the plan of a ValidateCreate the caller already made.
  absl::StatusOr<v1::OpenRegionResponse> Create(const v1::CreateRegionRequest& request,
                                                Clock::time_point deadline = {});
  absl::StatusOr<v1::OpenRegionResponse> Create(const v1::CreateRegionRequest& request, const CreatePlan& plan,
                                                Clock::time_point deadline = {});
  absl::StatusOr<v1::OpenRegionResponse> Open(const v1::OpenRegionRequest& request);
  absl::StatusOr<v1::ExtendRegionResponse> Extend(const v1::ExtendRegionRequest& request,
                                                 Clock::time_point deadline = {});
  // The daemon's data-path write gate (tcp-gather): pages of unsealed regions are open.
  void SetWriteGate(WriteGate* gate);
  // <state_dir>/pages.map: one byte per page, set while a page is out of the free stack (held by
  // a region or quarantined). After a restart only those pages, less the restored regions', can
  // still be read by clients of the previous run, so only they are quarantined. Call before
  // Restore; returns whether the map held the previous run's state (else all free pages are
  // quarantined, as without a map).
  absl::StatusOr<bool> AttachPageMap(const std::string& path);
  absl::StatusOr<v1::CommitRegionResponse> Commit(const v1::CommitRegionRequest& request);
  // `key_prefix` ("TENANT/", or "" for the admin and without tenants): leases of regions outside
  // it are treated as unknown, so a tenant cannot renew or release another tenant's leases.
  absl::StatusOr<v1::RenewLeasesResponse> Renew(const v1::RenewLeasesRequest& request,
                                                const std::string& key_prefix = "");
  absl::Status Release(const v1::ReleaseLeasesRequest& request, const std::string& key_prefix = "");

  // Tenants (server/auth.h): region keys are then TENANT/KEY; each tenant's quota and region
  // count are enforced at create and extend (RESOURCE_EXHAUSTED), and making room evicts the
  // requesting tenant's own regions first, other tenants' only down to their guarantees.
  void SetTenants(std::map<std::string, TenantPolicy> policies);
  struct TenantUsage {
    int64_t bytes = 0, regions = 0;
  };
  std::map<std::string, TenantUsage> UsageByTenant();
  // Tenant arenas: a tenant's regions get pages from [lo, hi) only, and its OpenRegion replies
  // carry `transport` (the arena's own shm file, fabric key, gather secret) instead of the shared
  // one. Tenants without an arena, and the admin's keys, use pages [0, shared_pages).
  struct Arena {
    uint32_t lo = 0, hi = 0;
    v1::TransportDescriptor transport;
  };
  void SetArenas(std::map<std::string, Arena> arenas, uint32_t shared_pages);
  absl::StatusOr<v1::DeleteRegionResponse> Delete(const v1::DeleteRegionRequest& request);
  absl::StatusOr<v1::ListRegionsResponse> List(const v1::ListRegionsRequest& request);
  absl::StatusOr<v1::RegionInfo> Get(const v1::GetRegionRequest& request);
  absl::StatusOr<v1::EvictResponse> Evict(const v1::EvictRequest& request);
  // Recomputes a sealed region's checksum; DATA_LOSS if its bytes changed since sealing.
  absl::StatusOr<v1::VerifyRegionResponse> Verify(const v1::VerifyRegionRequest& request);
  v1::StatsResponse Stats();

  // Drops expired leases, deletes regions idle past their TTL, reclaims quarantined pages,
  // compacts the journal when it has grown.
  void Reap(Clock::time_point now);

  // Persistence across restarts. Restore brings back the sealed regions a journal replayed:
  // each must fit the pool and still match its checksum, else it is dropped and counted. Then
  // QuarantinePreviouslyHandedOut: of the other pages, those the previous run had handed out
  // (every one, when no page map says which) are quarantined for one lease period, since clients
  // of the previous run may still read them.
  // Then AttachJournal makes every later seal and removal of a sealed region a journal record.
  struct RestoreReport {
    int64_t restored = 0, restored_bytes = 0, dropped = 0;
    std::string first_problem;
  };
  RestoreReport Restore(const std::vector<v1::JournalSeal>& regions);
  // Quarantines the free pages the page map says the previous run handed out (all free pages when
  // it does not know); Restore calls it, and so does start-up when the pool survived but nothing
  // was restored.
  void QuarantinePreviouslyHandedOut();
  absl::Status AttachJournal(RegionJournal* journal, const v1::JournalPool& pool);

  // The parts of the config that may change at run time (SIGHUP): limits, lease length, log
  // level. New leases and renewals use the new length; leases already granted keep theirs.
  void ApplyRuntimeConfig(const DaemonConfig& next);
  DaemonConfig config() const;
  // A draining daemon refuses new regions; existing ones stay readable, writable and growable.
  void SetDraining(bool draining);
  // The network data paths every OpenRegion reply offers (tcp-gather, libfabric RMA, verbs);
  // the shm part is filled per reply.
  // `paths` describes every data path offered, for Stats (sparsekvctl status).
  void SetNetworkTransports(const v1::TransportDescriptor& network, std::vector<std::string> paths);
  bool draining() const;
  // The cluster member (server/cluster_member.h), or null.
  void SetObserver(RegionObserver* observer);
  // Every region, unlike List (which is capped at limits.max_list).
  std::vector<v1::RegionInfo> AllRegions();
  const Pool* pool() const { return pool_; }

 private:
  struct Region {
    uint64_t id = 0;
    std::string key;
    Geometry geometry;
    int64_t capacity_tokens = 0;
    int64_t committed_tokens = 0;
    bool sealed = false;
    int64_t created_unix_ms = 0;
    Clock::time_point last_access;
    int64_t ttl_ms = 0;
    std::vector<std::vector<uint32_t>> pages;  // [layer] -> pool pages
    absl::flat_hash_map<uint64_t, Clock::time_point> leases;  // lease id -> expiry
    bool has_checksum = false;  // computed when sealed
    uint64_t checksum = 0;
    uint64_t writer_lease = 0;  // the one lease that may write, extend, commit and seal (0: none)

    int64_t page_count() const;
  };

  // What checksumming needs of a region, copied so the hash runs outside the lock.
  struct RegionSnapshot {
    uint64_t id = 0;
    Geometry geometry;
    std::vector<std::vector<uint32_t>> pages;
    int64_t committed_tokens = 0;
  };
  RegionSnapshot SnapshotLocked(const Region& region) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status ValidateKey(const std::string& key) const;
  absl::Status CheckLeaseIdCount(int count) const;
  // Sealed regions without an unexpired lease, in the policy's order (first victim first).
  std::vector<EvictionCandidate> EvictionCandidatesLocked(Clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Region*> FindLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees enough pages for `pages`, evicting sealed unleased regions if needed (all or nothing).
  absl::Status MakeRoomLocked(int64_t pages, const std::string& for_what, Clock::time_point now,
                              const std::string& tenant = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Grows every layer's page list to hold `tokens`.
  absl::Status GrowLocked(Region* region, int64_t tokens, Clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes an eviction victim, logs and counts it; returns the bytes freed.
  int64_t EvictLocked(Region* victim, const std::string& why, Clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the region: revokes leases, quarantines or frees its pages.
  int64_t RemoveLocked(Region* region, const std::string& reason, Clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t GrantLeaseLocked(Region* region, Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool WriterAliveLocked(const Region& region, Clock::time_point now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `lease_id` is the region's live write lease; else FAILED_PRECONDITION saying why.
  absl::Status CheckWriterLocked(const Region& region, uint64_t lease_id, const char* what, Clock::time_point now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // When quarantined pages that would let `pages` more pages fit become free (no later than
  // `deadline`), or nullopt when waiting cannot help.
  std::optional<Clock::time_point> WaitWouldHelpLocked(int64_t pages, const std::string& tenant,
                                                       Clock::time_point deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  template <typename Attempt>
  auto RetryUntilDeadline(Clock::time_point deadline, Attempt attempt) -> decltype(attempt());
  bool HasLiveLeaseLocked(const Region& region, Clock::time_point now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillInfoLocked(const Region& region, Clock::time_point now, v1::RegionInfo* info) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillOpenLocked(Region* region, Clock::time_point now, v1::OpenRegionResponse* out, bool writer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Limits limits() const;
  int64_t lease_ms() const;
  v1::JournalSeal ToJournalSeal(const Region& region) const;
  absl::Status CompactJournalLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Pool* pool_;
  const int64_t page_bytes_;
  mutable absl::Mutex config_mu_;
  DaemonConfig config_ ABSL_GUARDED_BY(config_mu_);
  std::atomic<bool> draining_{false};
  v1::TransportDescriptor network_ ABSL_GUARDED_BY(mu_);
  bool tenants_enabled_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Arena> arenas_ ABSL_GUARDED_BY(mu_);
  uint32_t shared_pages_ ABSL_GUARDED_BY(mu_) = 0;  // 0: the whole pool
  std::pair<uint32_t, uint32_t> PageRangeLocked(const std::string& tenant) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::string, TenantPolicy> tenants_ ABSL_GUARDED_BY(mu_);
  std::string TenantOfLocked(const std::string& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  TenantUsage UsageOfLocked(const std::string& tenant) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> data_paths_ ABSL_GUARDED_BY(mu_);
  const std::unique_ptr<EvictionPolicy> policy_;
  const std::string fd_socket_path_;
  const std::string host_id_;
  const Clock::time_point started_;
  PageAllocator allocator_;
  WriteGate* gate_ ABSL_GUARDED_BY(mu_) = nullptr;
  RegionObserver* observer_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint8_t* page_map_ = nullptr;  // AttachPageMap's mapping
  size_t page_map_bytes_ = 0;
  // What the last failed MakeRoomLocked of this thread lacked (pages beyond the evictable ones).
  struct Shortfall {
    int64_t pages = 0;
    std::string tenant;
  };
  static thread_local std::optional<Shortfall> shortfall_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Region>> regions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Region*> lease_owner_ ABSL_GUARDED_BY(mu_);
  // Why a lease stopped being valid, kept for a while so renewals get a precise reason.
  absl::flat_hash_map<uint64_t, std::pair<std::string, Clock::time_point>> revoked_ ABSL_GUARDED_BY(mu_);
  uint64_t next_region_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_lease_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t incarnation_ = 0;  // high bits of this run's lease ids
  RegionJournal* journal_ ABSL_GUARDED_BY(mu_) = nullptr;
  v1::JournalPool journal_pool_ ABSL_GUARDED_BY(mu_);
  struct Counters {
    int64_t evictions = 0, evicted_bytes = 0, expired_regions = 0, abandoned_regions = 0, creates = 0, deletes = 0;
  } counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_REGION_TABLE_H_
