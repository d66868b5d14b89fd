// Private to sparsekv::cuda: DeviceBatch::Impl (the device mirror of the bound regions, pool
// registrations, staging) and the CUDA error and allocation helpers its units share.
#ifndef SPARSEKV_CLIENT_CUDA_DEVICE_BATCH_IMPL_H_
#define SPARSEKV_CLIENT_CUDA_DEVICE_BATCH_IMPL_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_format.h"
#include "client/cuda/kernels.h"
#include "client/region_view.h"
#include "client/transports/shm_transport.h"
#include "sparsekv/cuda.h"

namespace sparsekv::cuda {
namespace detail {

inline absl::Status CudaError(cudaError_t rc, const std::string& what) {
  if (rc == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code = rc == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted
                                                                 : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrFormat("%s: CUDA error %s (%s)", what, cudaGetErrorName(rc), cudaGetErrorString(rc)));
}

#define SKV_CUDA_RETURN(call, what)                      \
  do {                                                   \
    if (auto st__ = CudaError((call), (what)); !st__.ok()) return st__; \
  } while (0)

template <typename T>
T* DeviceAlloc(size_t count, absl::Status* status, const char* what) {
  void* p = nullptr;
  if (status->ok()) *status = CudaError(cudaMalloc(&p, std::max<size_t>(1, count) * sizeof(T)), what);
  return static_cast<T*>(p);
}
template <typename T>
T* HostAlloc(size_t count, absl::Status* status, const char* what) {
  void* p = nullptr;
  if (status->ok()) *status = CudaError(cudaMallocHost(&p, std::max<size_t>(1, count) * sizeof(T)), what);
  return static_cast<T*>(p);
}

}  // namespace detail

using detail::CudaError;
using detail::DeviceAlloc;
using detail::HostAlloc;

struct DeviceBatch::Impl {
  Client* client = nullptr;
  DeviceBatchOptions options;
  int32_t max_pages = 0;
  Geometry geometry;  // of the first bound region; later binds must match
  bool geometry_set = false;

  // Device mirror and its pinned host staging (each page's host slot is written once).
  uint32_t* d_pages = nullptr;
  int64_t* d_committed = nullptr;
  uint64_t* d_base = nullptr;
  DeviceError* d_error = nullptr;
  uint32_t* h_pages = nullptr;
  int64_t* h_committed = nullptr;
  uint64_t* h_base = nullptr;
  DeviceError* h_error = nullptr;

  struct Slot {
    std::shared_ptr<Region> region;
    std::shared_ptr<Transport> transport;
    std::vector<int32_t> uploaded;  // pages uploaded per layer
    bool mapped = false;
  };
  std::mutex mu;  // slots, and the lease check a host function runs on the stream
  std::vector<Slot> slots;
  struct Registration {
    std::shared_ptr<Transport> transport;  // keeps the mapping alive
    void* host = nullptr;
    uint64_t device = 0;
  };
  std::map<const void*, Registration> pools;

  std::atomic<bool> lease_lapsed{false};
  std::string lease_error;  // under mu

  // The staged path for network pools.
  std::byte* staging = nullptr;
  size_t staging_bytes = 0;
  int32_t* h_indices = nullptr;
  int32_t* h_row_slot = nullptr;
  size_t h_indices_count = 0, h_row_slot_count = 0;

  DeviceTables Tables() const {
    DeviceTables t;
    t.pages = d_pages;
    t.committed = d_committed;
    t.base = d_base;
    t.max_slots = options.max_slots;
    t.layers = options.layers;
    t.max_pages = max_pages;
    t.entry_bytes = options.entry_bytes;
    t.stride = geometry.entry_stride_bytes;
    t.tokens_per_page = geometry.tokens_per_page;
    t.page_bytes = geometry.page_bytes;
    return t;
  }

  ~Impl() {
    for (auto& [host, r] : pools) cudaHostUnregister(r.host);
    cudaFree(d_pages);
    cudaFree(d_committed);
    cudaFree(d_base);
    cudaFree(d_error);
    cudaFreeHost(h_pages);
    cudaFreeHost(h_committed);
    cudaFreeHost(h_base);
    cudaFreeHost(h_error);
    if (staging != nullptr) {
      (void)client->UnregisterBuffer(staging);
      cudaFreeHost(staging);
    }
    cudaFreeHost(h_indices);
    cudaFreeHost(h_row_slot);
  }

  absl::Status CheckLeases() {
    for (size_t s = 0; s < slots.size(); ++s) {
      if (slots[s].region == nullptr) continue;
      if (auto st = slots[s].region->LeaseStatus(); !st.ok()) {
        return absl::Status(st.code(), absl::StrFormat("batch slot %d: %s", s, st.message()));
      }
    }
    return absl::OkStatus();
  }

  // Runs on a CUDA thread when the stream reaches the end of a kernel.
  static void CUDART_CB LeaseCheckAfterKernel(void* raw) {
    auto* impl = static_cast<Impl*>(raw);
    std::lock_guard<std::mutex> lock(impl->mu);
    auto st = impl->CheckLeases();
    if (!st.ok() && !impl->lease_lapsed.exchange(true)) {
      impl->lease_error = absl::StrFormat("a lease lapsed while a device gather ran: %s", st.message());
    }
  }

  absl::Status UploadSlot(int32_t s, cudaStream_t stream, bool whole) {
    Slot& slot = slots[s];
    RegionView view = ViewOf(*slot.region);
    for (int32_t l = 0; l < options.layers; ++l) {
      const auto& pages = view.table->layers[l];
      const int32_t have = slot.uploaded[l];
      const int32_t now = static_cast<int32_t>(std::min<size_t>(pages.size(), static_cast<size_t>(max_pages)));
      if (static_cast<int64_t>(pages.size()) > max_pages) {
        return absl::OutOfRangeError(absl::StrFormat(
            "batch slot %d: region '%s' holds %d pages per layer, more than the %d the device mirror has "
            "(DeviceBatchOptions.max_tokens %d)", s, slot.region->key(), pages.size(), max_pages, options.max_tokens));
      }
      if (now <= have && !whole) continue;
      const size_t at = (static_cast<size_t>(s) * options.layers + l) * max_pages;
      for (int32_t p = have; p < now; ++p) h_pages[at + p] = pages[p];
      const int32_t from = whole ? 0 : have;
      if (now > from) {
        SKV_CUDA_RETURN(cudaMemcpyAsync(d_pages + at + from, h_pages + at + from, (now - from) * sizeof(uint32_t),
                                        cudaMemcpyHostToDevice, stream),
                        "uploading page tables");
      }
      slot.uploaded[l] = now;
    }
    // Readable tokens: committed, and never past the pages uploaded.
    int64_t readable = view.committed_tokens;
    for (int32_t l = 0; l < options.layers; ++l) {
      readable = std::min<int64_t>(readable, static_cast<int64_t>(slot.uploaded[l]) * geometry.tokens_per_page);
    }
    h_committed[s] = readable;
    SKV_CUDA_RETURN(cudaMemcpyAsync(d_committed + s, h_committed + s, sizeof(int64_t), cudaMemcpyHostToDevice, stream),
                    "uploading committed lengths");
    return absl::OkStatus();
  }

  absl::Status Register(const ShmTransport& shm, const std::shared_ptr<Transport>& keep, uint64_t* base) {
    auto it = pools.find(shm.mapping());
    if (it == pools.end()) {
      int device = options.device, read_only = 0;
      cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, device);
      unsigned flags = cudaHostRegisterMapped | cudaHostRegisterPortable;
      if (read_only) flags |= cudaHostRegisterReadOnly;
      void* host = const_cast<std::byte*>(shm.mapping());
      cudaError_t rc = cudaHostRegister(host, static_cast<size_t>(shm.size_bytes()), flags);
      if (rc != cudaSuccess) {
        cudaGetLastError();
        return absl::ResourceExhaustedError(absl::StrFormat(
            "cannot register pool %s (%d bytes mapped at %p%s) for device access: CUDA error %s (%s); check the "
            "locked-memory limit (ulimit -l, LimitMEMLOCK=)", shm.pool_uuid(), shm.size_bytes(), host,
            read_only ? ", read-only" : "", cudaGetErrorName(rc), cudaGetErrorString(rc)));
      }
      void* dev = nullptr;
      rc = cudaHostGetDevicePointer(&dev, host, 0);
      if (rc != cudaSuccess) {
        cudaHostUnregister(host);
        return CudaError(rc, absl::StrFormat("device address of pool %s", shm.pool_uuid()));
      }
      it = pools.emplace(shm.mapping(), Registration{keep, host, reinterpret_cast<uint64_t>(dev)}).first;
    }
    // Pool offsets are the daemon's: byte 0 of the mapping is pool offset arena_offset.
    *base = it->second.device - static_cast<uint64_t>(shm.arena_offset());
    return absl::OkStatus();
  }

  absl::Status StagedGather(cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch, int32_t k,
                            const int32_t* row_slot, void* dst, const int32_t* dst_slots);
};

}  // namespace sparsekv::cuda

#endif  // SPARSEKV_CLIENT_CUDA_DEVICE_BATCH_IMPL_H_
