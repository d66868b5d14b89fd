// PageAllocator hands out fixed-size pages of one Pool.
//
// Pages are the unit of placement: a region's layer is a list of pages, so a region grows
// during decode without moving. Allocate and Free are O(1) per page (a free stack). A page freed
// while leases could still read it is quarantined until a deadline and handed out again only
// after ReclaimExpired has passed that deadline, so a stale handle never reads another region's
// bytes.
//
// Allocation is all-or-nothing: either every page asked for is returned or none is.
// Thread-safe. The fetch path never calls it: clients read pages directly.
#ifndef SPARSEKV_SERVER_PAGE_ALLOCATOR_H_
#define SPARSEKV_SERVER_PAGE_ALLOCATOR_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace sparsekv {

class PageAllocator {
 public:
  using Clock = std::chrono::steady_clock;

  explicit PageAllocator(uint32_t num_pages);

  // Appends `count` pages to *out, or returns RESOURCE_EXHAUSTED and leaves *out unchanged.
  absl::Status Allocate(int64_t count, std::vector<uint32_t>* out);
  // The same, from pages [lo, hi) only (a tenant's arena).
  absl::Status AllocateIn(int64_t count, uint32_t lo, uint32_t hi, std::vector<uint32_t>* out);
  int64_t free_pages_in(uint32_t lo, uint32_t hi) const;

  // Returns pages to the free stack now.
  void Free(const std::vector<uint32_t>& pages);
  // Returns pages to the free stack once `reusable_at` has passed (see ReclaimExpired).
  void FreeAfter(std::vector<uint32_t> pages, Clock::time_point reusable_at);
  // Moves quarantined pages whose deadline is at or before `now` to the free stack.
  int64_t ReclaimExpired(Clock::time_point now);

  // Takes these specific pages out of the free stack (restoring regions after a restart).
  // INVALID_ARGUMENT, and nothing taken, if any is out of range, listed twice or not free.
  absl::Status ClaimAll(const std::vector<uint32_t>& pages);
  // Keeps `map` (one byte per page, e.g. a mapped file that outlives the process) up to date: 1
  // while a page is out of the free stack (held or quarantined), 0 once it is free again.
  // `previous` is what the map said before (the previous run's pages), kept for
  // QuarantinePrevious; empty when unknown.
  void AttachHandedOutMap(uint8_t* map, std::vector<uint8_t> previous);
  // Quarantines, until `reusable_at`, the free pages the previous run had handed out; every free
  // page when the previous run's map is unknown. Returns the pages quarantined.
  int64_t QuarantinePrevious(Clock::time_point reusable_at);
  // Pages of [lo, hi) that leave quarantine by `by`, and the first time any does (nullopt: none).
  int64_t quarantined_until_in(Clock::time_point by, uint32_t lo, uint32_t hi) const;
  std::optional<Clock::time_point> next_release() const;

  uint32_t total_pages() const { return total_pages_; }
  int64_t free_pages() const;
  int64_t quarantined_pages() const;
  int64_t used_pages() const;  // held by regions (not free, not quarantined)

 private:
  const uint32_t total_pages_;
  mutable absl::Mutex mu_;
  std::vector<uint32_t> free_ ABSL_GUARDED_BY(mu_);
  std::multimap<Clock::time_point, std::vector<uint32_t>> quarantine_ ABSL_GUARDED_BY(mu_);
  int64_t quarantined_ ABSL_GUARDED_BY(mu_) = 0;
  uint8_t* handed_out_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<uint8_t> previous_ ABSL_GUARDED_BY(mu_);
  void MarkLocked(const uint32_t* pages, size_t n, uint8_t value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_PAGE_ALLOCATOR_H_
