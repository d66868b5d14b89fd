// DeviceBatch: regions bound to batch slots, their page tables mirrored on the device, the
// gather launch, and the error and lease checks (sparsekv/cuda.h).
#include "client/cuda/device_batch_impl.h"

namespace sparsekv::cuda {

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

}  // namespace sparsekv::cuda
