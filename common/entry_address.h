// The one formula from a token to its entry's place in the pool, for host and device code alike
// (nvcc compiles it into the GPU kernels; common/geometry.h explains the layout).
#ifndef SPARSEKV_COMMON_ENTRY_ADDRESS_H_
#define SPARSEKV_COMMON_ENTRY_ADDRESS_H_

#include <cstdint>

#if defined(__CUDACC__)
#define SPARSEKV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SPARSEKV_HOST_DEVICE inline
#endif

namespace sparsekv {

// Index, in its layer's page list, of the page that holds token `token` (token >= 0).
template <typename T>
SPARSEKV_HOST_DEVICE T PageOfToken(T token, T tokens_per_page) {
  return token / tokens_per_page;
}

// Byte offset in the pool of token `token`'s entry, given the pool page that holds it
// (pages[PageOfToken(token)]): pool_page x page_bytes + (token mod tokens_per_page) x stride.
template <typename T>
SPARSEKV_HOST_DEVICE uint64_t EntryPoolOffset(uint64_t pool_page, T token, T tokens_per_page, uint64_t entry_stride,
                                              uint64_t page_bytes) {
  return pool_page * page_bytes + static_cast<uint64_t>(token % tokens_per_page) * entry_stride;
}

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_ENTRY_ADDRESS_H_
