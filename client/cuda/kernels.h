// Device kernels of the GPU path and their launchers (client/cuda/gather.cu, residency_kernels.cu). Plain C++ types
// only, so the host code that calls them compiles without nvcc.
#ifndef SPARSEKV_CLIENT_CUDA_KERNELS_H_
#define SPARSEKV_CLIENT_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sparsekv::cuda {

// The device mirror of the bound regions: page tables, committed lengths and where each slot's
// pool is mapped in the device's address space.
struct DeviceTables {
  const uint32_t* pages = nullptr;     // [max_slots][layers][max_pages]
  const int64_t* committed = nullptr;  // [max_slots]
  const uint64_t* base = nullptr;      // [max_slots]: device address of pool offset 0; 0: unbound
  int32_t max_slots = 0, layers = 0, max_pages = 0;
  int32_t entry_bytes = 0, stride = 0, tokens_per_page = 0;
  int64_t page_bytes = 0;
};

// The first error a kernel met (code 0: none). Later errors leave it as it is.
struct DeviceError {
  uint32_t code;   // kErrorIndex, kErrorSlot, kErrorCapacity
  int32_t row;
  int32_t layer;
  int32_t index;   // the token index (kErrorIndex)
  int32_t slot;
  int32_t pad;
  int64_t limit;   // the committed length it was checked against
};
inline constexpr uint32_t kErrorIndex = 1;     // index below -1, or at or past the committed length
inline constexpr uint32_t kErrorSlot = 2;      // a row names a batch slot with no region bound
inline constexpr uint32_t kErrorCapacity = 3;  // more distinct misses than evictable hot entries
inline constexpr uint32_t kErrorCopyWait = 5;  // the miss copy waited over a second for its lookup
inline constexpr uint32_t kErrorSharedSlot = 4;  // two rows of one lookup name one slot (index: the other row)

// dst: dense [batch][k][entry_bytes], or, with dst_slots, entry (r, i) at dst_slots[r * k + i].
void LaunchGather(const DeviceTables& t, cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch,
                  int32_t k, const int32_t* row_slot, uint8_t* dst, const int32_t* dst_slots, DeviceError* error);

// The residency cache: per (slot, layer) `capacity` hot entries (tokens[], order[] and the
// entry bytes in hot). Lookup decides hits, misses and victims exactly as ResidencyReference,
// writes each index's hot entry to out_slots [batch][k], then copies the misses in.
struct CacheState {
  int32_t* tokens = nullptr;  // [max_slots][layers][capacity], -1: empty
  int32_t* order = nullptr;   // [max_slots][layers][capacity], most recent first
  int32_t* where = nullptr;   // [max_slots][layers][map_tokens]: token -> its hot entry, -1: not hot
  int64_t map_tokens = 0;     // tokens the map covers (a slot's region may not grow past them)
  uint8_t* hot = nullptr;     // [max_slots][layers][capacity][entry_bytes]
  int32_t* pending = nullptr;  // [batch][max_k]: the token of each index that missed, else -1
  // The copy kernel is launched early (programmatic dependent launch) and reads the entries of
  // sure misses (tokens absent from the token map) while the lookup still runs; per row, a flag
  // set once every index's hot entry (out_slots) and miss (pending) is known, which the copy
  // kernel's last block of the row clears.
  int32_t* slots_ready = nullptr;   // [batch]
  int32_t* done = nullptr;          // [batch] copy blocks finished
  int32_t* arrived = nullptr;       // [batch][2] lookup blocks arrived: [0] a refused row's hand-off, [1] the slots'
  unsigned long long* counters = nullptr;  // [layers][2]: hits, misses
  int32_t capacity = 0;
  int32_t max_batch = 0, max_k = 0;
  int32_t blocks_per_row = 0;  // lookup: 0 auto, 1 one block per row, 8 a cluster of 8 per row
};
// Shared memory one lookup block needs; 0 if the shape cannot fit `limit` bytes.
size_t LookupSharedBytes(int32_t capacity, int32_t k);
void LaunchLookup(const DeviceTables& t, const CacheState& c, cudaStream_t stream, int32_t layer,
                  const int32_t* indices, int32_t batch, int32_t k, const int32_t* row_slot, int32_t* out_slots,
                  bool count, DeviceError* error);
// Resets the hot entries of one slot (every layer): empty, identity order.
void LaunchResetSlot(const CacheState& c, cudaStream_t stream, int32_t slot, int32_t layers);

}  // namespace sparsekv::cuda

#endif  // SPARSEKV_CLIENT_CUDA_KERNELS_H_
