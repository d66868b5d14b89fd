// Baselines of sparsekv-gpu-bench: a trivial flat zero-copy gather (host-resolved addresses, one
// thread per 16 bytes) and a HiSparse-style warp-per-entry kernel over a host-resolved list.
#include <cuda_runtime.h>

#include <cstdint>

namespace sparsekv::bench {

__global__ void FlatGatherKernel(const uint64_t* __restrict__ src, int64_t entries, int32_t vec, uint4* __restrict__ dst) {
  const int64_t total = entries * vec;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = c / vec;
    dst[c] = reinterpret_cast<const uint4*>(src[e])[c - e * vec];
  }
}

__global__ void WarpPerEntryKernel(const uint64_t* __restrict__ src, int64_t entries, int32_t vec, uint4* __restrict__ dst) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; e < entries; e += warps) {
    const uint4* s = reinterpret_cast<const uint4*>(src[e]);
    for (int v = lane; v < vec; v += 32) dst[e * vec + v] = s[v];
  }
}

// Holds the stream for `us` microseconds (one thread reading the global timer), so that the host
// can queue what follows before the device reaches it.
__global__ void HoldKernel(uint64_t ns) {
  uint64_t start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

void HoldStream(cudaStream_t stream, int us) { HoldKernel<<<1, 1, 0, stream>>>(static_cast<uint64_t>(us) * 1000); }

void LaunchFlatGather(const uint64_t* src, int64_t entries, int32_t entry_bytes, void* dst, cudaStream_t stream) {
  const int32_t vec = entry_bytes / 16;
  FlatGatherKernel<<<132 * 8, 256, 0, stream>>>(src, entries, vec, static_cast<uint4*>(dst));
}

void LaunchWarpPerEntry(const uint64_t* src, int64_t entries, int32_t entry_bytes, void* dst, cudaStream_t stream) {
  const int32_t vec = entry_bytes / 16;
  WarpPerEntryKernel<<<132 * 8, 256, 0, stream>>>(src, entries, vec, static_cast<uint4*>(dst));
}

}  // namespace sparsekv::bench
