#include "server/page_allocator.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace sparsekv {

PageAllocator::PageAllocator(uint32_t num_pages) : total_pages_(num_pages) {
  free_.reserve(num_pages);
  // Hand out low page numbers first: the stack pops from the back.
  for (uint32_t p = num_pages; p > 0; --p) free_.push_back(p - 1);
}

absl::Status PageAllocator::Allocate(int64_t count, std::vector<uint32_t>* out) {
  absl::MutexLock lock(&mu_);
  if (count < 0 || static_cast<size_t>(count) > free_.size()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%d pages requested, %d free, %d quarantined until leases expire", count, free_.size(),
        quarantined_));
  }
  MarkLocked(free_.data() + free_.size() - count, static_cast<size_t>(count), 1);
  out->insert(out->end(), free_.end() - count, free_.end());
  free_.resize(free_.size() - count);
  return absl::OkStatus();
}

absl::Status PageAllocator::AllocateIn(int64_t count, uint32_t lo, uint32_t hi, std::vector<uint32_t>* out) {
  if (lo == 0 && hi >= total_pages_) return Allocate(count, out);
  absl::MutexLock lock(&mu_);
  std::vector<size_t> picked;  // positions in free_, from the back (low pages first)
  for (size_t i = free_.size(); i > 0 && static_cast<int64_t>(picked.size()) < count; --i) {
    if (free_[i - 1] >= lo && free_[i - 1] < hi) picked.push_back(i - 1);
  }
  if (count < 0 || static_cast<int64_t>(picked.size()) < count) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%d pages requested, %d free in this arena", count, picked.size()));
  }
  for (size_t at : picked) {
    out->push_back(free_[at]);
    MarkLocked(&free_[at], 1, 1);
  }
  std::vector<bool> take(free_.size(), false);
  for (size_t at : picked) take[at] = true;
  size_t w = 0;
  for (size_t r = 0; r < free_.size(); ++r) {
    if (!take[r]) free_[w++] = free_[r];
  }
  free_.resize(w);
  return absl::OkStatus();
}

int64_t PageAllocator::free_pages_in(uint32_t lo, uint32_t hi) const {
  absl::MutexLock lock(&mu_);
  if (lo == 0 && hi >= total_pages_) return static_cast<int64_t>(free_.size());
  int64_t n = 0;
  for (uint32_t p : free_) n += (p >= lo && p < hi) ? 1 : 0;
  return n;
}

void PageAllocator::Free(const std::vector<uint32_t>& pages) {
  absl::MutexLock lock(&mu_);
  MarkLocked(pages.data(), pages.size(), 0);
  free_.insert(free_.end(), pages.rbegin(), pages.rend());
}

void PageAllocator::FreeAfter(std::vector<uint32_t> pages, Clock::time_point reusable_at) {
  absl::MutexLock lock(&mu_);
  quarantined_ += static_cast<int64_t>(pages.size());
  quarantine_.emplace(reusable_at, std::move(pages));
}

int64_t PageAllocator::ReclaimExpired(Clock::time_point now) {
  absl::MutexLock lock(&mu_);
  int64_t reclaimed = 0;
  while (!quarantine_.empty() && quarantine_.begin()->first <= now) {
    auto& pages = quarantine_.begin()->second;
    MarkLocked(pages.data(), pages.size(), 0);
    free_.insert(free_.end(), pages.rbegin(), pages.rend());
    reclaimed += static_cast<int64_t>(pages.size());
    quarantine_.erase(quarantine_.begin());
  }
  quarantined_ -= reclaimed;
  return reclaimed;
}

absl::Status PageAllocator::ClaimAll(const std::vector<uint32_t>& pages) {
  absl::MutexLock lock(&mu_);
  std::vector<bool> is_free(total_pages_, false), claimed(total_pages_, false);
  for (uint32_t p : free_) is_free[p] = true;
  for (uint32_t p : pages) {
    if (p >= total_pages_ || !is_free[p] || claimed[p]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "page %d is out of range, not free, or claimed twice (pool of %d pages)", p, total_pages_));
    }
    claimed[p] = true;
  }
  std::vector<uint32_t> rest;
  rest.reserve(free_.size() - pages.size());
  for (uint32_t p : free_) {
    if (!claimed[p]) rest.push_back(p);
  }
  MarkLocked(pages.data(), pages.size(), 1);
  free_ = std::move(rest);
  return absl::OkStatus();
}

int64_t PageAllocator::free_pages() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t PageAllocator::quarantined_pages() const {
  absl::MutexLock lock(&mu_);
  return quarantined_;
}

int64_t PageAllocator::used_pages() const {
  absl::MutexLock lock(&mu_);
  return total_pages_ - static_cast<int64_t>(free_.size()) - quarantined_;
}

}  // namespace sparsekv

namespace sparsekv {

void PageAllocator::MarkLocked(const uint32_t* pages, size_t n, uint8_t value) {
  if (handed_out_ == nullptr) return;
  for (size_t i = 0; i < n; ++i) {
    if (pages[i] < total_pages_) handed_out_[pages[i]] = value;
  }
}

void PageAllocator::AttachHandedOutMap(uint8_t* map, std::vector<uint8_t> previous) {
  absl::MutexLock lock(&mu_);
  handed_out_ = map;
  previous_ = std::move(previous);
  std::vector<bool> is_free(total_pages_, false);
  for (uint32_t p : free_) is_free[p] = true;
  for (uint32_t p = 0; p < total_pages_; ++p) handed_out_[p] = is_free[p] ? 0 : 1;
}

int64_t PageAllocator::QuarantinePrevious(Clock::time_point reusable_at) {
  absl::MutexLock lock(&mu_);
  const bool known = previous_.size() == total_pages_;
  std::vector<uint32_t> keep, held;
  for (uint32_t p : free_) ((!known || previous_[p] != 0) ? held : keep).push_back(p);
  previous_.clear();
  if (held.empty()) return 0;
  free_ = std::move(keep);
  MarkLocked(held.data(), held.size(), 1);
  quarantined_ += static_cast<int64_t>(held.size());
  std::reverse(held.begin(), held.end());  // low pages first when they return
  const int64_t n = static_cast<int64_t>(held.size());
  quarantine_.emplace(reusable_at, std::move(held));
  return n;
}

int64_t PageAllocator::quarantined_until_in(Clock::time_point by, uint32_t lo, uint32_t hi) const {
  absl::MutexLock lock(&mu_);
  int64_t n = 0;
  for (auto it = quarantine_.begin(); it != quarantine_.end() && it->first <= by; ++it) {
    for (uint32_t p : it->second) n += (p >= lo && p < hi) ? 1 : 0;
  }
  return n;
}

std::optional<PageAllocator::Clock::time_point> PageAllocator::next_release() const {
  absl::MutexLock lock(&mu_);
  if (quarantine_.empty()) return std::nullopt;
  return quarantine_.begin()->first;
}

}  // namespace sparsekv
