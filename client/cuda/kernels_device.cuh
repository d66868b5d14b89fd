// Device helpers the GPU path's kernels share (gather.cu, residency_kernels.cu): error reports,
// zero vectors, the pool address of (slot, layer, token) from the mirrored page tables, warp copies
// of an entry, and the grid size for a count of warp-sized work items.
#ifndef SPARSEKV_CLIENT_CUDA_KERNELS_DEVICE_CUH_
#define SPARSEKV_CLIENT_CUDA_KERNELS_DEVICE_CUH_

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "client/cuda/kernels.h"
#include "common/entry_address.h"

namespace sparsekv::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kEmpty = -1;

__device__ void Report(DeviceError* error, uint32_t code, int32_t row, int32_t layer, int32_t index, int32_t slot,
                       int64_t limit) {
  if (atomicCAS(&error->code, 0u, code) == 0u) {
    error->row = row;
    error->layer = layer;
    error->index = index;
    error->slot = slot;
    error->limit = limit;
  }
}

template <typename V>
__device__ V Zero();
template <>
__device__ uint4 Zero<uint4>() { return make_uint4(0, 0, 0, 0); }
template <>
__device__ uint32_t Zero<uint32_t>() { return 0; }
template <>
__device__ uint8_t Zero<uint8_t>() { return 0; }

// Pool address of (slot, layer, token); the caller has checked the token against committed.
__device__ __forceinline__ const uint8_t* EntryAddress(const DeviceTables& t, int32_t slot, int32_t layer, int32_t token) {
  const uint32_t tpp = static_cast<uint32_t>(t.tokens_per_page);
  const uint32_t page_index = PageOfToken<uint32_t>(static_cast<uint32_t>(token), tpp);
  const uint32_t page = t.pages[(static_cast<int64_t>(slot) * t.layers + layer) * t.max_pages + page_index];
  return reinterpret_cast<const uint8_t*>(
      t.base[slot] + EntryPoolOffset<uint32_t>(page, static_cast<uint32_t>(token), tpp, t.stride, t.page_bytes));
}

// One warp per entry: lanes move vectors of the entry, two per lane in flight before storing.
template <typename V>
__device__ __forceinline__ void CopyEntry(V* __restrict__ out, const V* __restrict__ src, int vec, int lane) {
  for (int v = lane; v < vec; v += 2 * kWarp) {
    const bool second = v + kWarp < vec;
    V a = src[v];
    V b = second ? src[v + kWarp] : Zero<V>();
    out[v] = a;
    if (second) out[v + kWarp] = b;
  }
}

// Entries are taken kGroup at a time per warp: lane j < kGroup resolves entry j's pool address
// (index, slot, committed length, page table: a chain of dependent loads), then the whole warp
// moves the group's vectors, several independent loads in flight per lane. Resolving a group at
// once hides the chain's latency behind the group's copies.

inline int Blocks(int64_t warps_of_work, int threads) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t per_block = threads / kWarp;
  const int64_t want = (warps_of_work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(sms) * 8;
  return static_cast<int>(want < 1 ? 1 : (want > cap ? cap : want));
}


}  // namespace
}  // namespace sparsekv::cuda

#endif  // SPARSEKV_CLIENT_CUDA_KERNELS_DEVICE_CUH_
