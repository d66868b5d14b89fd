// ShmTransport reads and writes a pool that this process has mapped: a memfd received from the
// daemon over its Unix socket, a file or hugetlbfs file, or a device-dax CXL device. Gathers
// are plain loads with software prefetch several entries ahead, so a random top-k gather runs
// close to the machine's sequential copy bandwidth.
//
// Readers get a read-only mapping (PROT_READ): a stray store through a reader's pointer faults in
// the reader instead of corrupting the pool. Only the first write (a handle holding the region's
// write lease) maps the pool writable, from the descriptor the daemon handed over (memfd) or by
// opening the pool file read-write.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_SHM_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORTS_SHM_TRANSPORT_H_

#include <memory>
#include <atomic>

#include "absl/synchronization/mutex.h"
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
  // The mapping itself: mapping() is pool offset arena_offset(), size_bytes() long.
  const std::byte* mapping() const { return mapping_; }
  int64_t arena_offset() const { return address_.arena_offset; }
  const std::string& pool_uuid() const { return address_.pool_uuid; }
  int64_t size_bytes() const { return size_bytes_; }
  // Whether this process has mapped the pool writable (it wrote through this transport).
  bool writable() const { return writable_base_.load(std::memory_order_acquire) != nullptr; }

 private:
  ShmTransport() = default;
  absl::StatusOr<std::byte*> WritableBase();
  ShmPoolAddress address_;
  int fd_ = -1;                   // memfd pools: kept to map writable on the first write
  const std::byte* base_ = nullptr;   // read-only mapping, shifted by the arena offset
  std::byte* mapping_ = nullptr;  // what mmap returned (base_ + arena_offset)
  int64_t size_bytes_ = 0;
  absl::Mutex write_mu_;
  std::atomic<std::byte*> writable_base_{nullptr};
  std::byte* writable_mapping_ ABSL_GUARDED_BY(write_mu_) = nullptr;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_SHM_TRANSPORT_H_
