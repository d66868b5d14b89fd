// WriteGate says which pool pages the daemon's own data paths may write: the pages of unsealed
// regions. Pages of sealed regions, free pages and quarantined pages are closed, so a write that
// reaches the daemon (tcp-gather) for a sealed region, or for memory that belongs to no region,
// is refused with the range and the page named, and nothing of it is applied.
//
// The RegionTable opens pages when an unsealed region grows and closes them when the region is
// sealed or removed. Closing waits for every write in progress (an exclusive lock against the
// writers' shared one), so once Seal returns, no write that was checked before it can still land
// and change the bytes the seal checksum covers.
#ifndef SPARSEKV_SERVER_WRITE_GATE_H_
#define SPARSEKV_SERVER_WRITE_GATE_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace sparsekv {

class WriteGate {
 public:
  WriteGate(uint32_t pages, int64_t page_bytes) : page_bytes_(page_bytes), open_(pages, 0) {}

  void Open(absl::Span<const uint32_t> pages) {
    absl::WriterMutexLock lock(&mu_);
    for (uint32_t p : pages) {
      if (p < open_.size()) open_[p] = 1;
    }
  }
  void Close(absl::Span<const uint32_t> pages) {
    absl::WriterMutexLock lock(&mu_);  // waits for writes in progress
    for (uint32_t p : pages) {
      if (p < open_.size()) open_[p] = 0;
    }
  }

  // One write of `count` ranges: range i is bytes [offsets[i], offsets[i] + lengths[i]) of the
  // pool, taken in order from `payload`. All ranges are checked before any byte is copied.
  absl::Status Write(std::byte* pool_base, size_t count, const uint64_t* offsets, const uint32_t* lengths,
                     const std::byte* payload) {
    absl::ReaderMutexLock lock(&mu_);
    for (size_t i = 0; i < count; ++i) {
      if (lengths[i] == 0) continue;
      const uint64_t first = offsets[i] / static_cast<uint64_t>(page_bytes_);
      const uint64_t last = (offsets[i] + lengths[i] - 1) / static_cast<uint64_t>(page_bytes_);
      for (uint64_t p = first; p <= last; ++p) {
        if (p >= open_.size() || open_[p] == 0) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "write range %d [%d, +%d) touches pool page %d, which belongs to no unsealed region "
              "(sealed, free or quarantined): the write is refused and nothing of it was applied",
              i, offsets[i], lengths[i], p));
        }
      }
    }
    size_t at = 0;
    for (size_t i = 0; i < count; ++i) {
      std::memcpy(pool_base + offsets[i], payload + at, lengths[i]);
      at += lengths[i];
    }
    return absl::OkStatus();
  }

 private:
  const int64_t page_bytes_;
  absl::Mutex mu_;
  std::vector<uint8_t> open_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_WRITE_GATE_H_
