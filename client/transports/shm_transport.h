// ShmTransport reads and writes a pool that this process has mapped: a memfd received from the
// daemon over its Unix socket, a file or hugetlbfs file, or a device-dax CXL device. Gathers
// are plain loads with software prefetch several entries ahead, so a random top-k gather runs
// close to the machine's sequential copy bandwidth.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_SHM_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORTS_SHM_TRANSPORT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/transport.h"

namespace sparsekv {

struct ShmPoolAddress {
  std::string fd_socket_path;  // memfd pools: ask the daemon for the descriptor here
  std::string path;            // path-backed pools: open this
  int64_t pool_bytes = 0;
  std::string pool_uuid;
  std::string host_id;         // the daemon's host
  int64_t arena_offset = 0;    // pool offset of the mapping's byte 0 (a tenant's arena)
};

// How far ahead the gather prefetches, in entries. A random top-k gather is bound by how many
// cache misses are in flight, not by bandwidth: the first line of an entry far ahead starts its
// page walk and DRAM access early, the rest of its lines follow a few entries ahead. Both go to
// L2 (prefetcht1): L1 has too few miss buffers to keep enough entries in flight. Tuned with
// sparsekv-bench; {0, 0} is the plain per-entry memcpy loop.
struct GatherPrefetch {
  int far_entries = 16;
  int near_entries = 8;
};

// The gather loop itself, exposed for the benchmark and tests.
void GatherEntries(const std::byte* base, absl::Span<const int64_t> offsets, int32_t entry_bytes,
                   std::byte* dst, GatherPrefetch prefetch = {});

class ShmTransport final : public Transport {
 public:
  // Maps the pool, or says precisely why this process cannot.
  static absl::StatusOr<std::unique_ptr<ShmTransport>> Map(const ShmPoolAddress& address);
  ~ShmTransport() override;

  const char* name() const override { return "shm"; }
  absl::Status Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes,
                      std::byte* dst) override;
  absl::Status Scatter(const std::byte* src, int32_t entry_bytes,
                       absl::Span<const int64_t> pool_offsets) override;

  const std::byte* base() const { return base_; }
  int64_t size_bytes() const { return size_bytes_; }

 private:
  ShmTransport() = default;
  std::byte* base_ = nullptr;
  std::byte* mapping_ = nullptr;  // what mmap returned (base_ + arena_offset)
  int64_t size_bytes_ = 0;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_SHM_TRANSPORT_H_
