// Pool is the one memory arena of a memory node: a shared mapping that clients on the same host
// (or sharing a CXL device) map too, so a fetch is plain loads with no server CPU.
//
// Backings:
//   memfd              anonymous shared memory; clients get the descriptor over a Unix socket
//   memfd-hugetlb      the same on 2 MiB huge pages from the kernel's reserved pool
//                      (vm.nr_hugepages): far fewer TLB misses on random top-k gathers
//   file:PATH          a file (tmpfs for CXL emulation, or any filesystem); clients open PATH
//   hugetlbfs:PATH     a file on a hugetlbfs mount; size rounded to the huge page size
//   devdax:/dev/daxX.Y CXL Type-3 memory in device-dax mode; mapped whole-aligned
//   numa:N             memfd memory bound to NUMA node N (CXL memory onlined as a CPU-less node)
//
// Create either returns a fully mapped, reserved (and, if asked, pre-faulted) pool or a precise
// error: there is no half-made pool. The mapping lives until the Pool is destroyed.
#ifndef SPARSEKV_SERVER_POOL_H_
#define SPARSEKV_SERVER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sparsekv {

struct PoolBackingSpec {
  enum class Kind { kMemfd, kMemfdHugetlb, kFile, kHugetlbfs, kDevdax, kNuma };
  Kind kind = Kind::kMemfd;
  std::string path;   // file, hugetlbfs, devdax
  int numa_node = -1; // numa
};

absl::StatusOr<PoolBackingSpec> ParseBackingSpec(const std::string& text);
const char* BackingKindName(PoolBackingSpec::Kind kind);

// The default pool size for this machine: a quarter of available memory, at most 4 GiB,
// at least 64 MiB, rounded down to whole pages.
int64_t DefaultPoolBytes(int64_t page_bytes);

class Pool {
 public:
  // Reports reservation progress (bytes done, bytes total) now and then for large pools.
  using Progress = std::function<void(int64_t done, int64_t total)>;
  // `inherited_fd`, for memfd-style backings, is a pool descriptor kept for us across a
  // restart (systemd's descriptor store); Create takes ownership and maps it instead of making
  // a new one.
  static absl::StatusOr<std::unique_ptr<Pool>> Create(const PoolBackingSpec& spec,
                                                      int64_t size_bytes, bool prefault,
                                                      const Progress& progress = nullptr,
                                                      int inherited_fd = -1);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  std::byte* base() const { return base_; }
  int64_t size_bytes() const { return size_bytes_; }
  int fd() const { return fd_; }
  const PoolBackingSpec& spec() const { return spec_; }
  const std::string& uuid() const { return uuid_; }
  // The pool kept the bytes of a previous run: an inherited memfd, or a path-backed file that
  // already had this size.
  bool survived() const { return survived_; }
  // Restores the identity of the previous run's pool, so clients recognise it.
  void set_uuid(std::string uuid) { uuid_ = std::move(uuid); }
  bool memory_backed() const {
    return spec_.kind == PoolBackingSpec::Kind::kMemfd || spec_.kind == PoolBackingSpec::Kind::kMemfdHugetlb ||
           spec_.kind == PoolBackingSpec::Kind::kNuma;
  }
  // Path a client may open instead of receiving the fd ("" for memfd and numa).
  std::string client_path() const;
  // "memfd", "file:/dev/shm/x", ... with the details an operator wants in `status`.
  std::string Describe() const;

  // Tenant arenas (memfd backing only): the last `sizes` bytes of the pool are re-backed, one
  // range per arena, by memfds of their own mapped at the same addresses, so the daemon still
  // sees one contiguous pool while a descriptor handed to one tenant maps that tenant's arena
  // only. The pool's own memfd keeps backing [0, size - sum(sizes)) (the shared arena); its pages
  // under the tenant arenas are released. Call before anything is stored in the pool.
  struct Arena {
    std::string name;
    int64_t offset = 0;
    int64_t bytes = 0;
    int fd = -1;
  };
  absl::StatusOr<std::vector<Arena>> SplitIntoArenas(const std::vector<std::pair<std::string, int64_t>>& sizes);
  const std::vector<Arena>& arenas() const { return arenas_; }
 private:
  Pool() = default;
  PoolBackingSpec spec_;
  std::byte* base_ = nullptr;
  int64_t size_bytes_ = 0;
  int fd_ = -1;
  std::string uuid_;
  bool survived_ = false;
  std::vector<Arena> arenas_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_POOL_H_
