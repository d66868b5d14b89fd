// ResidencyCache: hot buffers per (slot, layer) in device memory, exact LRU, the lookup and miss
// copy launches, warm-up, counters (sparsekv/cuda.h).
#include "client/cuda/device_batch_impl.h"

namespace sparsekv::cuda {

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
