// The top-k gather: entries read straight from the pool mapped into the device's address space
// (zero-copy over PCIe/C2C), token -> pool address resolved on the device, so nothing on the host
// sits between the indexer's top-k and the fetch; it neither allocates nor synchronises (CUDA
// graphs capture it).
#include "client/cuda/kernels_device.cuh"

namespace sparsekv::cuda {
namespace {

constexpr int kGroup = 16;
constexpr int kUnroll = 8;  // loads per lane in flight before their stores

template <typename V>
__global__ void GatherKernel(DeviceTables t, int32_t layer, const int32_t* __restrict__ indices, int32_t batch,
                             int32_t k, const int32_t* __restrict__ row_slot, uint8_t* __restrict__ dst,
                             const int32_t* __restrict__ dst_slots, DeviceError* error) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int vec = t.entry_bytes / static_cast<int>(sizeof(V));
  const int64_t total = static_cast<int64_t>(batch) * k;
  for (int64_t first = ((static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp) * kGroup; first < total;
       first += warps * kGroup) {
    // Lane j < kGroup resolves entry first + j: src (null: zero-fill) and dst.
    const V* src = nullptr;
    V* out = nullptr;
    if (lane < kGroup && first + lane < total) {
      const int64_t e = first + lane;
      const int32_t row = static_cast<int32_t>(e / k);
      const int32_t token = indices[e];
      const int64_t at = dst_slots != nullptr ? static_cast<int64_t>(dst_slots[e]) : e;
      out = reinterpret_cast<V*>(dst + at * t.entry_bytes);
      if (token != -1) {  // -1: padding, reads nothing
        const int32_t slot = row_slot[row];
        if (slot < 0 || slot >= t.max_slots || t.base[slot] == 0) {
          Report(error, kErrorSlot, row, layer, token, slot, 0);
        } else {
          const int64_t committed = t.committed[slot];
          if (token < 0 || token >= committed) {
            Report(error, kErrorIndex, row, layer, token, slot, committed);
          } else {
            src = reinterpret_cast<const V*>(EntryAddress(t, slot, layer, token));
          }
        }
      }
    }
    const int in_group = static_cast<int>(total - first < kGroup ? total - first : kGroup);
    const int chunks = in_group * vec;
    for (int c0 = 0; c0 < chunks; c0 += kUnroll * kWarp) {  // uniform across the warp (shuffles inside)
      V r[kUnroll];
      V* o[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + lane + u * kWarp;
        const int j = c < chunks ? c / vec : 0;
        const V* s = reinterpret_cast<const V*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(src), j));
        V* d = reinterpret_cast<V*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(out), j));
        o[u] = c < chunks ? d + (c - j * vec) : nullptr;
        r[u] = (c < chunks && s != nullptr) ? s[c - j * vec] : Zero<V>();
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (o[u] != nullptr) *o[u] = r[u];
      }
    }
  }
}

}  // namespace

void LaunchGather(const DeviceTables& t, cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch,
                  int32_t k, const int32_t* row_slot, uint8_t* dst, const int32_t* dst_slots, DeviceError* error) {
  const int64_t entries = static_cast<int64_t>(batch) * k;
  if (entries == 0) return;
  constexpr int kThreads = 256;
  const int blocks = Blocks((entries + kGroup - 1) / kGroup, kThreads);  // a warp per group of entries
  const bool aligned16 = t.entry_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0 && t.stride % 16 == 0 &&
                         t.page_bytes % 16 == 0;
  if (aligned16) {
    GatherKernel<uint4><<<blocks, kThreads, 0, stream>>>(t, layer, indices, batch, k, row_slot, dst, dst_slots, error);
  } else if (t.entry_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % 4 == 0) {
    GatherKernel<uint32_t><<<blocks, kThreads, 0, stream>>>(t, layer, indices, batch, k, row_slot, dst, dst_slots, error);
  } else {
    GatherKernel<uint8_t><<<blocks, kThreads, 0, stream>>>(t, layer, indices, batch, k, row_slot, dst, dst_slots, error);
  }
}

}  // namespace sparsekv::cuda
