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
#include "common/gather_protocol.h"

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

  // One write (a tcp-gather request): range i's bytes are taken in order from `payload`. All
  // ranges are checked before any byte is copied.
  absl::Status Write(std::byte* pool_base, absl::Span<const GatherRange> ranges, const std::byte* payload) {
    absl::ReaderMutexLock lock(&mu_);
    for (size_t i = 0; i < ranges.size(); ++i) {
      const GatherRange& r = ranges[i];
      if (r.bytes == 0) continue;
      const uint64_t first = r.offset / static_cast<uint64_t>(page_bytes_);
      const uint64_t last = (r.offset + r.bytes - 1) / static_cast<uint64_t>(page_bytes_);
      for (uint64_t p = first; p <= last; ++p) {
        if (p >= open_.size() || open_[p] == 0) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "write range %d [%d, +%d) touches pool page %d, which belongs to no unsealed region "
              "(sealed, free or quarantined): the write is refused and nothing of it was applied",
              i, r.offset, r.bytes, p));
        }
      }
    }
    size_t at = 0;
    for (const GatherRange& r : ranges) {
      std::memcpy(pool_base + r.offset, payload + at, r.bytes);
      at += r.bytes;
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
