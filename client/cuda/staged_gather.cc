// DeviceBatch's staged path: rows whose region's pool is not mapped on this host (network
// transports) are fetched by the client into pinned staging memory and copied to the device.
#include "client/cuda/device_batch_impl.h"

namespace sparsekv::cuda {

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

}  // namespace sparsekv::cuda
