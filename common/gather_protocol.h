// The wire format of the server-side gather transport ("tcp-gather"): a client sends the byte
// ranges of a whole fetch (or write) in one message and the daemon answers with all the bytes in
// one reply, sent straight from pool memory. This is the path for fabrics without one-sided
// RMA, and plain TCP between hosts.
//
// All integers little-endian.
//   request:  GatherRequestHeader, count x GatherRange, then (writes) the payload. The header's
//             secret names an arena (a range of the pool); ranges outside it are refused.
//   response: GatherResponseHeader, then payload_bytes: the ranges' bytes in order (reads), or
//             an error message (status != 0)
#ifndef SPARSEKV_COMMON_GATHER_PROTOCOL_H_
#define SPARSEKV_COMMON_GATHER_PROTOCOL_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparsekv {

inline constexpr uint32_t kGatherMagic = 0x47564b53;  // "SKVG"
inline constexpr uint32_t kGatherMaxRanges = 1u << 20;
inline constexpr uint64_t kGatherMaxBytes = uint64_t{256} << 20;

enum class GatherOp : uint32_t { kRead = 1, kWrite = 2 };
// kRefused: a well-formed write the daemon will not apply (a sealed region's pages).
enum class GatherStatus : uint32_t { kOk = 0, kBadRequest = 1, kRefused = 2 };

struct GatherRequestHeader {
  uint32_t magic;
  uint32_t op;
  uint64_t id;
  uint32_t count;
  uint32_t reserved;
  uint64_t secret;  // the arena's gather_secret from the open-region reply
};

struct GatherRange {
  uint64_t offset;
  uint32_t bytes;
  uint32_t reserved;
};

struct GatherResponseHeader {
  uint32_t magic;
  uint32_t status;
  uint64_t id;
  uint64_t payload_bytes;
};

static_assert(sizeof(GatherRequestHeader) == 32 && sizeof(GatherRange) == 16 && sizeof(GatherResponseHeader) == 24);

// After a (partial) vectored write of `written` bytes starting at iov[*at], moves *at and trims
// the first unfinished buffer so the next write resumes exactly where this one stopped.
inline void AdvanceIov(std::vector<iovec>& iov, size_t* at, size_t written) {
  while (written > 0 && *at < iov.size()) {
    if (written >= iov[*at].iov_len) {
      written -= iov[*at].iov_len;
      ++*at;
    } else {
      iov[*at].iov_base = static_cast<char*>(iov[*at].iov_base) + written;
      iov[*at].iov_len -= written;
      written = 0;
    }
  }
}

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_GATHER_PROTOCOL_H_
