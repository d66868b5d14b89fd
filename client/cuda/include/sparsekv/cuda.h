// sparsekv::cuda — the GPU path of libsparsekv: top-k latent-cache entries straight from the
// pool into device memory, inside the decode step (target sparsekv::cuda).
//
// A DeviceBatch mirrors, on one GPU, the page tables of the regions a decode batch reads: each
// request is bound to a batch slot. The pool these regions live in (the client's shm/CXL
// mapping: memfd, file, hugetlbfs, devdax, NUMA) is registered for device access once
// (cudaHostRegister, read-only where the driver allows), so the gather kernel reads entries over
// PCIe/C2C itself and resolves token -> pool address on the device: nothing on the host sits
// between the indexer's top-k and the fetch, and no call allocates or synchronises, so a whole
// decode step can be captured in a CUDA graph and replayed with new indices.
//
// Indices are device int32 [batch, k] as the indexer leaves them: -1 is padding (reads nothing,
// its entry is zero-filled). An index below -1 or at or past the slot's committed length reads
// nothing, zero-fills its entry and sets the batch's device error word; CheckErrors() turns it
// into OUT_OF_RANGE naming the row, layer and index.
//
// ResidencyCache keeps, per (batch slot, layer), a hot buffer of `capacity` entries in device
// memory (exact LRU, as ESS and SGLang/vLLM's HiSparse do), returns for every top-k index its hot
// entry (the page table a sparse attention kernel such as FlashMLA's consumes) and fetches only
// the misses from the pool. Besides the hot buffers (capacity x entry_bytes per slot and layer)
// it keeps a token -> hot entry map of 4 bytes per token a slot can hold (DeviceBatchOptions
// max_tokens, rounded up to 32768) per slot and layer, so a lookup answers hits with one load
// each instead of rebuilding a hash table. The rows of one lookup must name distinct slots.
//
// Leases: Sync, Gather and Lookup check every bound slot's lease on the host before they enqueue
// work, and EndStep (once per decode step, after its last gather) enqueues a host function that
// checks them again when the stream gets there; a lease that lapsed in between makes
// CheckErrors() fail with FAILED_PRECONDITION. A lease that holds at the end of the step held
// throughout it (leases only lapse; a lapsed one is never renewed, and a reopen succeeds only
// for the same region, whose pages never move), so one check per step covers every kernel of the
// step without a host round trip per layer. In a captured graph the EndStep check is part of the
// graph and runs at every replay, while the checks before enqueueing ran at capture only: call
// Sync() (leases, new pages, committed lengths) before each replay.
//
// Network pools (tcp-gather, fabric, verbs): a slot whose region is not mapped is served through
// the client's transport into pinned staging memory and then copied to the device on the same
// stream; that path needs the indices on the host, so it synchronises the stream (see README).
#ifndef SPARSEKV_CUDA_H_
#define SPARSEKV_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sparsekv/client.h"

namespace sparsekv::cuda {

struct DeviceBatchOptions {
  int device = 0;              // CUDA device ordinal
  int32_t max_slots = 64;      // batch slots (requests decoded at once)
  int32_t layers = 0;          // of every bound region
  int32_t entry_bytes = 0;     // of every bound region (656: the DeepSeek-V3.2 latent entry)
  int64_t max_tokens = 131072; // the longest region a slot may hold (sizes the page-table mirror)
};

class DeviceBatch {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceBatch>> Create(Client& client, const DeviceBatchOptions& options);
  ~DeviceBatch();
  DeviceBatch(const DeviceBatch&) = delete;
  DeviceBatch& operator=(const DeviceBatch&) = delete;

  // Binds a region to a batch slot: registers its pool for device access (once per pool) and
  // uploads its page table, stream-ordered. INVALID_ARGUMENT if its shape differs from the
  // batch's; RESOURCE_EXHAUSTED naming the pool and the CUDA error if registration fails (e.g.
  // the locked-memory limit).
  absl::Status Bind(int32_t slot, std::shared_ptr<Region> region, cudaStream_t stream);
  // Forgets the slot (the region handle is released).
  void Release(int32_t slot);
  // For every bound slot: uploads the pages its region gained since the last Sync (only those)
  // and its committed length, stream-ordered; checks leases. Call once per decode step, after
  // appends and before the gathers (and before replaying a captured graph).
  absl::Status Sync(cudaStream_t stream);

  // dst: dense [batch][k][entry_bytes] device memory; row r reads the region of slot
  // row_slot[r] (device int32 [batch]). With dst_slots (device int32 [batch][k]), entry (r, i)
  // goes to dst + dst_slots[r * k + i] * entry_bytes instead.
  absl::Status Gather(cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch, int32_t k,
                      const int32_t* row_slot, void* dst, const int32_t* dst_slots = nullptr);

  // Enqueues the end-of-step lease check (see the top of this file).
  absl::Status EndStep(cudaStream_t stream);

  // Waits for the stream, reads and clears the error word: OUT_OF_RANGE naming row, slot, layer
  // and index; INVALID_ARGUMENT for a row of an unbound slot; FAILED_PRECONDITION for a lease that
  // lapsed while a kernel ran.
  absl::Status CheckErrors(cudaStream_t stream);
  // The device error word (uint32, 0 = none), for callers that check it on the device.
  const uint32_t* device_error_word() const;

  const DeviceBatchOptions& options() const;
  int32_t entry_bytes() const;

  struct Impl;

 private:
  friend class ResidencyCache;
  explicit DeviceBatch(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ResidencyCacheOptions {
  int32_t capacity = 6144;  // hot entries per (slot, layer); >= k of every lookup
  int32_t max_k = 2048;     // largest k a lookup takes
  int32_t max_batch = 64;   // largest batch a lookup takes
  // Blocks that decide one row's lookup: 1 (one block per row), or 2, 4, 8, 16 (a cluster of
  // blocks sharing the row's state through distributed shared memory; 16 is Hopper's
  // non-portable size, 8 where it cannot be scheduled). 0 (auto): 16 while batch x 16 blocks
  // take at most a quarter of the SMs, 8 while batch x 8 fit them, else 1. Decisions are the
  // same whatever the size. The rows of one
  // lookup must name distinct slots (INVALID_ARGUMENT from CheckErrors otherwise).
  int32_t blocks_per_row = 0;
};

struct LayerCounters {
  uint64_t hits = 0;    // index occurrences served from the hot buffer
  uint64_t misses = 0;  // entries fetched from the pool
};

class ResidencyCache {
 public:
  static absl::StatusOr<std::unique_ptr<ResidencyCache>> Create(DeviceBatch& batch, const ResidencyCacheOptions& options);
  ~ResidencyCache();

  // For each index of indices [batch][k] (device int32), the hot entry that holds it after this
  // call, in out_slots (device int32 [batch][k]; -1 for padding and errors); the misses are
  // copied into the hot buffers on the stream. Call once per layer per decode step.
  absl::Status Lookup(cudaStream_t stream, int32_t layer, const int32_t* indices, int32_t batch, int32_t k,
                      const int32_t* row_slot, int32_t* out_slots);
  // Loads the given tokens (host list, e.g. the top-k of the last prefill windows) into a slot's
  // hot buffer for a layer, without counting them.
  absl::Status Warm(cudaStream_t stream, int32_t slot, int32_t layer, const std::vector<int32_t>& tokens);
  // Empties every layer of a slot's hot buffer (its request ended).
  absl::Status ReleaseSlot(cudaStream_t stream, int32_t slot);

  // Device address of the hot buffer of (slot, layer): capacity x entry_bytes.
  void* hot_buffer(int32_t slot, int32_t layer) const;
  // Hit and miss counts per layer since the last reset (waits for the stream).
  absl::StatusOr<std::vector<LayerCounters>> Counters(cudaStream_t stream, bool reset = false);
  // The cache's state of (slot, layer), copied to the host (for tests): token per hot entry and
  // the recency order (most recent first).
  absl::Status ReadState(cudaStream_t stream, int32_t slot, int32_t layer, std::vector<int32_t>* tokens,
                         std::vector<int32_t>* order);

  struct Impl;

 private:
  explicit ResidencyCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsekv::cuda

#endif  // SPARSEKV_CUDA_H_
