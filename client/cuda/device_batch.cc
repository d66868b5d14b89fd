// Host side of the GPU path: pool registration, the device page-table mirror, launches, error
// and lease checks, the staged path for network pools, and the residency cache's buffers.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_format.h"
#include "client/cuda/kernels.h"
#include "client/internal.h"
#include "client/transports/shm_transport.h"
#include "sparsekv/cuda.h"

namespace sparsekv::cuda {
namespace {

absl::Status CudaError(cudaError_t rc, const std::string& what) {
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

}  // namespace

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

absl::StatusOr<std::unique_ptr<DeviceBatch>> DeviceBatch::Create(Client& client, const DeviceBatchOptions& options) {
  if (options.max_slots <= 0 || options.layers <= 0 || options.entry_bytes <= 0 || options.max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "DeviceBatchOptions: max_slots (%d), layers (%d), entry_bytes (%d) and max_tokens (%d) must be positive",
        options.max_slots, options.layers, options.entry_bytes, options.max_tokens));
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || options.device >= count || options.device < 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrFormat("CUDA device %d is not present (%d devices)", options.device, count));
  }
  SKV_CUDA_RETURN(cudaSetDevice(options.device), "cudaSetDevice");
  auto impl = std::make_unique<Impl>();
  impl->client = &client;
  impl->options = options;
  // Page tables are sized for the smallest page a region can have (one entry per page at worst
  // is impossible: pages hold many entries); the real bound is set at the first Bind.
  impl->slots.resize(options.max_slots);
  return std::unique_ptr<DeviceBatch>(new DeviceBatch(std::move(impl)));
}

DeviceBatch::DeviceBatch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceBatch::~DeviceBatch() = default;

const DeviceBatchOptions& DeviceBatch::options() const { return impl_->options; }
int32_t DeviceBatch::entry_bytes() const { return impl_->options.entry_bytes; }
const uint32_t* DeviceBatch::device_error_word() const { return impl_->d_error ? &impl_->d_error->code : nullptr; }

absl::Status DeviceBatch::Bind(int32_t slot, std::shared_ptr<Region> region, cudaStream_t stream) {
  Impl& m = *impl_;
  if (slot < 0 || slot >= m.options.max_slots) {
    return absl::OutOfRangeError(absl::StrFormat("batch slot %d is not in [0, %d)", slot, m.options.max_slots));
  }
  if (region == nullptr) return absl::InvalidArgumentError("Bind: no region");
  if (region->layers() != m.options.layers || region->entry_bytes() != m.options.entry_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s' is %d layers x %d-byte entries; this batch holds %d layers x %d-byte entries", region->key(),
        region->layers(), region->entry_bytes(), m.options.layers, m.options.entry_bytes));
  }
  if (auto st = region->LeaseStatus(); !st.ok()) return st;
  RegionView view = ViewOf(*region);
  std::lock_guard<std::mutex> lock(m.mu);
  if (!m.geometry_set) {
    m.geometry = view.geometry;
    m.geometry_set = true;
    m.max_pages = static_cast<int32_t>(view.geometry.PagesPerLayer(m.options.max_tokens));
    absl::Status st;
    const size_t table = static_cast<size_t>(m.options.max_slots) * m.options.layers * m.max_pages;
    m.d_pages = DeviceAlloc<uint32_t>(table, &st, "device page tables");
    m.d_committed = DeviceAlloc<int64_t>(m.options.max_slots, &st, "device committed lengths");
    m.d_base = DeviceAlloc<uint64_t>(m.options.max_slots, &st, "device pool bases");
    m.d_error = DeviceAlloc<DeviceError>(1, &st, "device error word");
    m.h_pages = HostAlloc<uint32_t>(table, &st, "pinned page tables");
    m.h_committed = HostAlloc<int64_t>(m.options.max_slots, &st, "pinned committed lengths");
    m.h_base = HostAlloc<uint64_t>(m.options.max_slots, &st, "pinned pool bases");
    m.h_error = HostAlloc<DeviceError>(1, &st, "pinned error word");
    if (!st.ok()) return st;
    std::memset(m.h_base, 0, sizeof(uint64_t) * m.options.max_slots);
    std::memset(m.h_committed, 0, sizeof(int64_t) * m.options.max_slots);
    SKV_CUDA_RETURN(cudaMemsetAsync(m.d_base, 0, sizeof(uint64_t) * m.options.max_slots, stream), "clearing bases");
    SKV_CUDA_RETURN(cudaMemsetAsync(m.d_committed, 0, sizeof(int64_t) * m.options.max_slots, stream), "clearing lengths");
    SKV_CUDA_RETURN(cudaMemsetAsync(m.d_error, 0, sizeof(DeviceError), stream), "clearing the error word");
  } else if (view.geometry.page_bytes != m.geometry.page_bytes ||
             view.geometry.entry_stride_bytes != m.geometry.entry_stride_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "region '%s' lives in a pool with %d-byte pages, this batch's regions in one with %d-byte pages",
        region->key(), view.geometry.page_bytes, m.geometry.page_bytes));
  }
  Impl::Slot fresh;
  fresh.region = std::move(region);
  fresh.transport = view.transport;
  fresh.uploaded.assign(m.options.layers, 0);
  uint64_t base = 0;
  if (auto* shm = dynamic_cast<ShmTransport*>(view.transport.get()); shm != nullptr) {
    if (auto st = m.Register(*shm, view.transport, &base); !st.ok()) return st;
    fresh.mapped = true;
  }
  m.slots[slot] = std::move(fresh);
  if (auto st = m.UploadSlot(slot, stream, /*whole=*/true); !st.ok()) {
    m.slots[slot] = Impl::Slot();
    return st;
  }
  m.h_base[slot] = base;
  SKV_CUDA_RETURN(cudaMemcpyAsync(m.d_base + slot, m.h_base + slot, sizeof(uint64_t), cudaMemcpyHostToDevice, stream),
                  "uploading the pool base");
  return absl::OkStatus();
}

void DeviceBatch::Release(int32_t slot) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  if (slot < 0 || slot >= m.options.max_slots) return;
  m.slots[slot] = Impl::Slot();
  if (m.h_base != nullptr) {
    m.h_base[slot] = 0;
    cudaMemcpy(m.d_base + slot, m.h_base + slot, sizeof(uint64_t), cudaMemcpyHostToDevice);
  }
}

absl::Status DeviceBatch::Sync(cudaStream_t stream) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  if (auto st = m.CheckLeases(); !st.ok()) return st;
  for (int32_t s = 0; s < m.options.max_slots; ++s) {
    if (m.slots[s].region == nullptr) continue;
    if (auto st = m.UploadSlot(s, stream, /*whole=*/false); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status DeviceBatch::Gather(cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch, int32_t k,
                                 const int32_t* row_slot, void* dst, const int32_t* dst_slots) {
  Impl& m = *impl_;
  if (layer < 0 || layer >= m.options.layers) {
    return absl::OutOfRangeError(absl::StrFormat("layer %d is not in [0, %d)", layer, m.options.layers));
  }
  if (batch < 0 || k < 0) return absl::InvalidArgumentError(absl::StrFormat("batch %d, k %d", batch, k));
  if (!m.geometry_set) return absl::FailedPreconditionError("no region is bound to this batch");
  bool all_mapped = true;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (auto st = m.CheckLeases(); !st.ok()) return st;
    for (const auto& s : m.slots) all_mapped &= s.region == nullptr || s.mapped;
  }
  if (!all_mapped) return m.StagedGather(stream, layer, indices, batch, k, row_slot, dst, dst_slots);
  LaunchGather(m.Tables(), stream, layer, indices, batch, k, row_slot, static_cast<uint8_t*>(dst), dst_slots, m.d_error);
  SKV_CUDA_RETURN(cudaGetLastError(), "launching the gather kernel");
  return absl::OkStatus();
}

absl::Status DeviceBatch::Impl::StagedGather(cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch,
                                             int32_t k, const int32_t* row_slot, void* dst, const int32_t* dst_slots) {
  // Network pools: the indices come to the host, the client's transport fetches into pinned
  // staging memory (registered with the client, so RMA transports land there directly), and one
  // copy takes the step to the device on the same stream.
  const size_t n = static_cast<size_t>(batch) * k;
  const size_t eb = static_cast<size_t>(options.entry_bytes);
  absl::Status st;
  if (h_indices_count < n) {
    cudaFreeHost(h_indices);
    h_indices = HostAlloc<int32_t>(n, &st, "pinned index staging");
    h_indices_count = n;
  }
  if (h_row_slot_count < static_cast<size_t>(batch)) {
    cudaFreeHost(h_row_slot);
    h_row_slot = HostAlloc<int32_t>(batch, &st, "pinned slot staging");
    h_row_slot_count = batch;
  }
  if (staging_bytes < n * eb) {
    if (staging != nullptr) {
      (void)client->UnregisterBuffer(staging);
      cudaFreeHost(staging);
    }
    staging = HostAlloc<std::byte>(n * eb, &st, "pinned entry staging");
    staging_bytes = n * eb;
    if (st.ok()) st = client->RegisterBuffer(staging, staging_bytes);
  }
  if (!st.ok()) return st;
  SKV_CUDA_RETURN(cudaMemcpyAsync(h_indices, indices, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream), "indices");
  SKV_CUDA_RETURN(cudaMemcpyAsync(h_row_slot, row_slot, batch * sizeof(int32_t), cudaMemcpyDeviceToHost, stream), "slots");
  SKV_CUDA_RETURN(cudaStreamSynchronize(stream), "waiting for the indices");
  std::vector<std::vector<int32_t>> compact(batch);
  std::vector<std::vector<size_t>> where(batch);
  std::vector<FetchItem> items;
  std::vector<std::byte> fetched;
  std::memset(staging, 0, n * eb);
  size_t total = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (int32_t r = 0; r < batch; ++r) {
      const int32_t s = h_row_slot[r];
      if (s < 0 || s >= options.max_slots || slots[s].region == nullptr) {
        return absl::InvalidArgumentError(absl::StrFormat("row %d names batch slot %d, which has no region bound", r, s));
      }
      for (int32_t i = 0; i < k; ++i) {
        const int32_t t = h_indices[static_cast<size_t>(r) * k + i];
        if (t == -1) continue;
        compact[r].push_back(t);
        where[r].push_back(static_cast<size_t>(r) * k + i);
      }
      total += compact[r].size();
    }
    fetched.resize(total * eb);
    size_t at = 0;
    for (int32_t r = 0; r < batch; ++r) {
      items.push_back({slots[h_row_slot[r]].region.get(), layer, compact[r],
                       absl::MakeSpan(fetched.data() + at * eb, compact[r].size() * eb)});
      at += compact[r].size();
    }
  }
  if (auto fst = client->FetchBatch(items); !fst.ok()) return fst;
  size_t at = 0;
  for (int32_t r = 0; r < batch; ++r) {
    for (size_t j = 0; j < where[r].size(); ++j, ++at) {
      std::memcpy(staging + where[r][j] * eb, fetched.data() + at * eb, eb);
    }
  }
  if (dst_slots == nullptr) {
    SKV_CUDA_RETURN(cudaMemcpyAsync(dst, staging, n * eb, cudaMemcpyHostToDevice, stream), "staged copy to the device");
  } else {
    std::vector<int32_t> slots_host(n);
    SKV_CUDA_RETURN(cudaMemcpy(slots_host.data(), dst_slots, n * sizeof(int32_t), cudaMemcpyDeviceToHost), "dst slots");
    for (size_t e = 0; e < n; ++e) {
      SKV_CUDA_RETURN(cudaMemcpyAsync(static_cast<std::byte*>(dst) + static_cast<size_t>(slots_host[e]) * eb,
                                      staging + e * eb, eb, cudaMemcpyHostToDevice, stream),
                      "staged copy to the device");
    }
  }
  // The staging area is reused by the next call: wait until the copy has read it.
  SKV_CUDA_RETURN(cudaStreamSynchronize(stream), "staged copy to the device");
  return absl::OkStatus();
}

absl::Status DeviceBatch::EndStep(cudaStream_t stream) {
  return CudaError(cudaLaunchHostFunc(stream, &Impl::LeaseCheckAfterKernel, impl_.get()), "queueing the lease check");
}

absl::Status DeviceBatch::CheckErrors(cudaStream_t stream) {
  Impl& m = *impl_;
  SKV_CUDA_RETURN(cudaStreamSynchronize(stream), "waiting for the stream");
  if (m.lease_lapsed.exchange(false)) {
    std::lock_guard<std::mutex> lock(m.mu);
    return absl::FailedPreconditionError(m.lease_error);
  }
  if (m.d_error == nullptr) return absl::OkStatus();
  SKV_CUDA_RETURN(cudaMemcpy(m.h_error, m.d_error, sizeof(DeviceError), cudaMemcpyDeviceToHost), "reading the error word");
  const DeviceError e = *m.h_error;
  if (e.code == 0) return absl::OkStatus();
  SKV_CUDA_RETURN(cudaMemset(m.d_error, 0, sizeof(DeviceError)), "clearing the error word");
  std::string key = "?";
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (e.slot >= 0 && e.slot < m.options.max_slots && m.slots[e.slot].region) key = m.slots[e.slot].region->key();
  }
  switch (e.code) {
    case kErrorIndex:
      return absl::OutOfRangeError(absl::StrFormat(
          "device gather: row %d (batch slot %d, region '%s'), layer %d: index %d is not in [0, %d), the committed "
          "length; its entry was zero-filled and nothing was read", e.row, e.slot, key, e.layer, e.index, e.limit));
    case kErrorSlot:
      return absl::InvalidArgumentError(absl::StrFormat(
          "device gather: row %d names batch slot %d, which has no region bound", e.row, e.slot));
    case kErrorCopyWait:
      return absl::InternalError(absl::StrFormat(
          "residency cache: row %d (slot %d), layer %d: the miss copy waited over a second for its lookup; the hot "
          "buffer may be missing entries (release the slot)", e.row, e.slot, e.layer));
    case kErrorSharedSlot:
      return absl::InvalidArgumentError(absl::StrFormat(
          "residency cache: rows %d and %d of one lookup name the same batch slot %d (region '%s'); each row needs a "
          "slot of its own (a slot's hot buffer serves one sequence); neither row was looked up",
          std::min(e.index, e.row), std::max(e.index, e.row), e.slot, key));
    case kErrorCapacity:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "residency cache: row %d (slot %d), layer %d: %d distinct misses but only %d evictable hot entries; the "
          "capacity must be at least k", e.row, e.slot, e.layer, e.index, e.limit));
    default:
      return absl::InternalError(absl::StrFormat("device error code %d", e.code));
  }
}

// ---------------------------------------------------------------------------------------------
// ResidencyCache

struct ResidencyCache::Impl {
  DeviceBatch* batch = nullptr;
  ResidencyCacheOptions options;
  CacheState state;
  int32_t* d_warm_indices = nullptr;
  int32_t* d_warm_slot = nullptr;
  int32_t* d_warm_out = nullptr;
  ~Impl() {
    cudaFree(state.tokens);
    cudaFree(state.order);
    cudaFree(state.where);
    cudaFree(state.hot);
    cudaFree(state.pending);
    cudaFree(state.slots_ready);
    cudaFree(state.done);
    cudaFree(state.arrived);
    cudaFree(state.counters);
    cudaFree(d_warm_indices);
    cudaFree(d_warm_slot);
    cudaFree(d_warm_out);
  }
};

absl::StatusOr<std::unique_ptr<ResidencyCache>> ResidencyCache::Create(DeviceBatch& batch,
                                                                        const ResidencyCacheOptions& options) {
  const DeviceBatchOptions& b = batch.options();
  if (options.capacity < options.max_k || options.max_k <= 0 || options.max_batch <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ResidencyCacheOptions: capacity %d must be at least max_k %d (> 0); max_batch %d must be positive",
        options.capacity, options.max_k, options.max_batch));
  }
  int limit = 0;
  cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, b.device);
  const size_t need = LookupSharedBytes(options.capacity, options.max_k);
  if (need > static_cast<size_t>(limit)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a hot buffer of %d entries looked up with k = %d needs %d bytes of shared memory per block; this device "
        "has %d (lower the capacity)", options.capacity, options.max_k, need, limit));
  }
  auto impl = std::make_unique<Impl>();
  impl->batch = &batch;
  impl->options = options;
  CacheState& c = impl->state;
  c.capacity = options.capacity;
  c.max_batch = options.max_batch;
  c.max_k = options.max_k;
  if (options.blocks_per_row < 0 || options.blocks_per_row > 16 ||
      (options.blocks_per_row & (options.blocks_per_row - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ResidencyCacheOptions.blocks_per_row %d: want 0 (auto), 1, 2, 4, 8 or 16", options.blocks_per_row));
  }
  c.blocks_per_row = options.blocks_per_row;
  const size_t per = static_cast<size_t>(b.max_slots) * b.layers * options.capacity;
  absl::Status st;
  c.tokens = DeviceAlloc<int32_t>(per, &st, "hot-buffer tokens");
  c.order = DeviceAlloc<int32_t>(per, &st, "hot-buffer recency order");
  // The token -> hot entry map covers every token a bound region can hold: max_tokens rounded up
  // to whole pages of the largest page a pool may have (2 MiB of 64-byte entries).
  c.map_tokens = (b.max_tokens + 32767) / 32768 * 32768;
  c.where = DeviceAlloc<int32_t>(static_cast<size_t>(b.max_slots) * b.layers * c.map_tokens, &st,
                                 "token map of the hot buffers");
  c.hot = DeviceAlloc<uint8_t>(per * b.entry_bytes, &st, "hot buffers");
  c.pending = DeviceAlloc<int32_t>(static_cast<size_t>(options.max_batch) * options.max_k, &st, "miss lists");
  c.slots_ready = DeviceAlloc<int32_t>(options.max_batch, &st, "lookup to copy flags");
  c.done = DeviceAlloc<int32_t>(options.max_batch, &st, "copy completion counters");
  c.arrived = DeviceAlloc<int32_t>(2 * static_cast<size_t>(options.max_batch), &st, "lookup arrival counters");
  c.counters = DeviceAlloc<unsigned long long>(2 * b.layers, &st, "hit and miss counters");
  impl->d_warm_indices = DeviceAlloc<int32_t>(options.max_k, &st, "warm-up indices");
  impl->d_warm_slot = DeviceAlloc<int32_t>(1, &st, "warm-up slot");
  impl->d_warm_out = DeviceAlloc<int32_t>(options.max_k, &st, "warm-up output");
  if (!st.ok()) return st;
  SKV_CUDA_RETURN(cudaMemset(c.counters, 0, sizeof(unsigned long long) * 2 * b.layers), "clearing counters");
  for (int32_t* flags : {c.slots_ready, c.done}) {
    SKV_CUDA_RETURN(cudaMemset(flags, 0, sizeof(int32_t) * options.max_batch), "clearing the lookup flags");
  }
  SKV_CUDA_RETURN(cudaMemset(c.arrived, 0, sizeof(int32_t) * 2 * options.max_batch), "clearing the lookup flags");
  for (int32_t s = 0; s < b.max_slots; ++s) LaunchResetSlot(c, nullptr, s, b.layers);
  SKV_CUDA_RETURN(cudaDeviceSynchronize(), "initialising the hot buffers");
  return std::unique_ptr<ResidencyCache>(new ResidencyCache(std::move(impl)));
}

ResidencyCache::ResidencyCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ResidencyCache::~ResidencyCache() = default;

absl::Status ResidencyCache::Lookup(cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch, int32_t k,
                                    const int32_t* row_slot, int32_t* out_slots) {
  Impl& c = *impl_;
  DeviceBatch::Impl& m = *c.batch->impl_;
  if (layer < 0 || layer >= m.options.layers) {
    return absl::OutOfRangeError(absl::StrFormat("layer %d is not in [0, %d)", layer, m.options.layers));
  }
  if (batch < 0 || batch > c.options.max_batch || k < 0 || k > c.options.max_k) {
    return absl::InvalidArgumentError(absl::StrFormat("lookup of batch %d x k %d; this cache takes at most %d x %d", batch,
                                                      k, c.options.max_batch, c.options.max_k));
  }
  if (!m.geometry_set) return absl::FailedPreconditionError("no region is bound to this batch");
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (auto st = m.CheckLeases(); !st.ok()) return st;
    for (size_t s = 0; s < m.slots.size(); ++s) {
      if (m.slots[s].region != nullptr && !m.slots[s].mapped) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "batch slot %d: region '%s' is reached over %s, not mapped; the residency cache needs a mapped pool (use "
            "DeviceBatch::Gather, which stages network fetches)", s, m.slots[s].region->key(),
            m.slots[s].transport->name()));
      }
    }
  }
  LaunchLookup(m.Tables(), c.state, stream, layer, indices, batch, k, row_slot, out_slots, /*count=*/true, m.d_error);
  SKV_CUDA_RETURN(cudaGetLastError(), "launching the residency lookup");
  return absl::OkStatus();
}

absl::Status ResidencyCache::Warm(cudaStream_t stream, int32_t slot, int32_t layer, const std::vector<int32_t>& tokens) {
  Impl& c = *impl_;
  DeviceBatch::Impl& m = *c.batch->impl_;
  if (tokens.size() > static_cast<size_t>(c.options.max_k)) {
    return absl::InvalidArgumentError(absl::StrFormat("warm-up of %d tokens; at most max_k = %d", tokens.size(), c.options.max_k));
  }
  if (layer < 0 || layer >= m.options.layers) {
    return absl::OutOfRangeError(absl::StrFormat("layer %d is not in [0, %d)", layer, m.options.layers));
  }
  const int32_t k = static_cast<int32_t>(tokens.size());
  SKV_CUDA_RETURN(cudaMemcpyAsync(c.d_warm_indices, tokens.data(), k * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
                  "warm-up indices");
  SKV_CUDA_RETURN(cudaMemcpyAsync(c.d_warm_slot, &slot, sizeof(int32_t), cudaMemcpyHostToDevice, stream), "warm-up slot");
  LaunchLookup(m.Tables(), c.state, stream, layer, c.d_warm_indices, 1, k, c.d_warm_slot, c.d_warm_out, /*count=*/false,
               m.d_error);
  SKV_CUDA_RETURN(cudaGetLastError(), "launching the warm-up");
  // The host vectors above are pageable: the copies complete before the call returns.
  SKV_CUDA_RETURN(cudaStreamSynchronize(stream), "warm-up");
  return absl::OkStatus();
}

absl::Status ResidencyCache::ReleaseSlot(cudaStream_t stream, int32_t slot) {
  Impl& c = *impl_;
  const DeviceBatchOptions& b = c.batch->options();
  if (slot < 0 || slot >= b.max_slots) {
    return absl::OutOfRangeError(absl::StrFormat("batch slot %d is not in [0, %d)", slot, b.max_slots));
  }
  LaunchResetSlot(c.state, stream, slot, b.layers);
  return CudaError(cudaGetLastError(), "resetting a slot");
}

void* ResidencyCache::hot_buffer(int32_t slot, int32_t layer) const {
  const DeviceBatchOptions& b = impl_->batch->options();
  return impl_->state.hot +
         (static_cast<size_t>(slot) * b.layers + layer) * impl_->state.capacity * static_cast<size_t>(b.entry_bytes);
}

absl::StatusOr<std::vector<LayerCounters>> ResidencyCache::Counters(cudaStream_t stream, bool reset) {
  const int32_t layers = impl_->batch->options().layers;
  std::vector<unsigned long long> raw(2 * layers);
  SKV_CUDA_RETURN(cudaStreamSynchronize(stream), "waiting for the stream");
  SKV_CUDA_RETURN(cudaMemcpy(raw.data(), impl_->state.counters, raw.size() * sizeof(raw[0]), cudaMemcpyDeviceToHost),
                  "reading counters");
  if (reset) SKV_CUDA_RETURN(cudaMemset(impl_->state.counters, 0, raw.size() * sizeof(raw[0])), "resetting counters");
  std::vector<LayerCounters> out(layers);
  for (int32_t l = 0; l < layers; ++l) out[l] = {raw[2 * l], raw[2 * l + 1]};
  return out;
}

absl::Status ResidencyCache::ReadState(cudaStream_t stream, int32_t slot, int32_t layer, std::vector<int32_t>* tokens,
                                       std::vector<int32_t>* order) {
  const DeviceBatchOptions& b = impl_->batch->options();
  const size_t n = impl_->state.capacity;
  const size_t at = (static_cast<size_t>(slot) * b.layers + layer) * n;
  tokens->resize(n);
  order->resize(n);
  SKV_CUDA_RETURN(cudaStreamSynchronize(stream), "waiting for the stream");
  SKV_CUDA_RETURN(cudaMemcpy(tokens->data(), impl_->state.tokens + at, n * 4, cudaMemcpyDeviceToHost), "reading tokens");
  SKV_CUDA_RETURN(cudaMemcpy(order->data(), impl_->state.order + at, n * 4, cudaMemcpyDeviceToHost), "reading order");
  return absl::OkStatus();
}

}  // namespace sparsekv::cuda
