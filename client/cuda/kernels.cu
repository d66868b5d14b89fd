// The GPU path's kernels: a top-k gather that reads entries straight from the pool mapped into
// the device's address space (zero-copy over PCIe/C2C), and the residency cache's lookup (exact
// LRU, the same decisions as ResidencyReference) with its miss copy.
//
// Both resolve token -> pool address on the device from the mirrored page tables, so nothing on
// the host sits between the indexer's top-k and the fetch; neither allocates nor synchronises,
// so both can be captured in a CUDA graph and replayed with new indices.
#include "client/cuda/kernels.h"

#include <cooperative_groups.h>
#include <cuda_runtime.h>

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
  const uint32_t page_index = static_cast<uint32_t>(token) / tpp;
  const uint32_t in_page = static_cast<uint32_t>(token) - page_index * tpp;
  const uint32_t page = t.pages[(static_cast<int64_t>(slot) * t.layers + layer) * t.max_pages + page_index];
  return reinterpret_cast<const uint8_t*>(t.base[slot] + static_cast<uint64_t>(page) * t.page_bytes +
                                          static_cast<uint64_t>(in_page) * t.stride);
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
template <typename V>
__device__ __forceinline__ void ZeroEntry(V* out, int vec, int lane) {
  for (int v = lane; v < vec; v += kWarp) out[v] = Zero<V>();
}

// Entries are taken kGroup at a time per warp: lane j < kGroup resolves entry j's pool address
// (index, slot, committed length, page table: a chain of dependent loads), then the whole warp
// moves the group's vectors, several independent loads in flight per lane. Resolving a group at
// once hides the chain's latency behind the group's copies.
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

// ---- residency cache -------------------------------------------------------------------------

// In-place exclusive scan of a[0, n) in shared memory by the whole block; returns the total.
__device__ int BlockExclusiveScan(int32_t* a, int n, int32_t* parts) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int chunk = (n + nt - 1) / nt;
  const int begin = min(n, tid * chunk), end = min(n, begin + chunk);
  int local = 0;
  for (int i = begin; i < end; ++i) local += a[i];
  // Warp-inclusive scan of the per-thread sums, then across warps.
  int incl = local;
  const int lane = tid % kWarp, warp = tid / kWarp;
  for (int d = 1; d < kWarp; d <<= 1) {
    int up = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += up;
  }
  if (lane == kWarp - 1) parts[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int nw = nt / kWarp;
    int v = lane < nw ? parts[lane] : 0;
    for (int d = 1; d < kWarp; d <<= 1) {
      int up = __shfl_up_sync(0xffffffffu, v, d);
      if (lane >= d) v += up;
    }
    if (lane < nw) parts[lane] = v;  // inclusive totals per warp
  }
  __syncthreads();
  const int before_warp = warp > 0 ? parts[warp - 1] : 0;
  int running = before_warp + incl - local;
  for (int i = begin; i < end; ++i) {
    const int x = a[i];
    a[i] = running;
    running += x;
  }
  const int total = parts[nt / kWarp - 1];
  __syncthreads();
  return total;
}

constexpr int32_t kPendingMiss = -2;

// Hand-off between a lookup and its (early-launched) miss copy: data, a fence, then the flag.
__device__ __forceinline__ void Publish(int32_t* flag) {
  __threadfence();
  *reinterpret_cast<volatile int32_t*>(flag) = 1;
}
// Waits for a flag (about a second at most: false if it never came).
__device__ __forceinline__ bool Await(const int32_t* flag) {
  const long long start = clock64();
  while (*reinterpret_cast<const volatile int32_t*>(flag) == 0) {
    if (clock64() - start > (1ll << 31)) return false;
    __nanosleep(200);
  }
  __threadfence();
  return true;
}

__host__ __device__ inline size_t Align16(size_t x) { return (x + 15) / 16 * 16; }

// The first earlier row of the lookup naming `slot` too, or -1. Rows sharing a slot would race
// on its hot buffer and token map, so such rows are refused (kErrorSharedSlot).
__device__ __forceinline__ int32_t SharedSlotRow(const int32_t* row_slot, int32_t rows, int32_t row, int32_t slot) {
  for (int32_t r = 0; r < rows; ++r) {
    if (r != row && row_slot[r] == slot) return r;
  }
  return -1;
}

// A miss's mark in the token map while a lookup runs: the smallest position wins (atomicMin),
// below every hot-entry index and below kEmpty.
__device__ __forceinline__ int32_t MissMark(int i) { return INT32_MIN + i; }

// The lookup: a cluster of kCluster blocks per batch row (1 when the rows fill the GPU; 2-16
// for small batches, where one block per row would leave all but a few SMs idle), each block
// owning a slice of the hot entries (their recency positions and touched flags, in its shared
// memory, read and written by the others through distributed shared memory) and a slice of the
// k indices. Cluster-wide scans combine each block's scan with the other blocks' totals. The
// token -> hot entry map (c.where, kept across steps) answers hits with one load per index.
// Decisions equal ResidencyReference entry for entry, for every cluster size (GPU tests).
constexpr int kMaxCluster = 16;
constexpr int kMaxLookupThreads = 1024;
// Threads per block: a lone block per row takes the most; clusters spread the row already.
constexpr int LookupThreads(int cluster) { return cluster == 1 ? kMaxLookupThreads : 512; }

struct ClusterLayout {
  int32_t n_slice = 0, k_slice = 0;
  size_t order, touched, scan, out, misstok, victims, parts, totals, bytes;
};

ClusterLayout MakeClusterLayout(int32_t capacity, int32_t k, int cluster) {
  ClusterLayout l{};
  l.n_slice = (capacity + cluster - 1) / cluster;
  l.k_slice = (k + cluster - 1) / cluster;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    size_t here = at;
    at = Align16(at + bytes);
    return here;
  };
  l.order = take(4ul * l.n_slice);
  l.touched = take(4ul * l.n_slice);
  l.scan = take(4ul * (l.n_slice > l.k_slice ? l.n_slice : l.k_slice));
  l.out = take(4ul * l.k_slice);
  l.misstok = take(4ul * l.k_slice);
  l.victims = take(4ul * l.k_slice);
  l.parts = take(4ul * (kMaxLookupThreads / kWarp));
  l.totals = take(4ul * 3 * kMaxCluster);
  l.bytes = at;
  return l;
}

template <int kCluster>
__global__ void __launch_bounds__(LookupThreads(kCluster))
    ClusterLookupKernel(DeviceTables t, CacheState c, ClusterLayout l, int32_t layer, const int32_t* __restrict__ indices,
                        int32_t k, const int32_t* __restrict__ row_slot, int32_t* __restrict__ out_slots, bool count,
                        DeviceError* error) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* s_order = reinterpret_cast<int32_t*>(smem + l.order);
  int32_t* s_touched = reinterpret_cast<int32_t*>(smem + l.touched);
  int32_t* s_scan = reinterpret_cast<int32_t*>(smem + l.scan);
  int32_t* s_out = reinterpret_cast<int32_t*>(smem + l.out);
  int32_t* s_misstok = reinterpret_cast<int32_t*>(smem + l.misstok);
  int32_t* s_victims = reinterpret_cast<int32_t*>(smem + l.victims);
  int32_t* s_parts = reinterpret_cast<int32_t*>(smem + l.parts);
  int32_t* s_totals = reinterpret_cast<int32_t*>(smem + l.totals);  // [3][kCluster]
  __shared__ unsigned long long s_hits;
  cudaTriggerProgrammaticLaunchCompletion();  // the miss copy may start: it waits on the flags

  const int tid = threadIdx.x, nt = blockDim.x;
  const int rank = static_cast<int>(cluster.block_rank());
  const int32_t row = blockIdx.x / kCluster;
  const int32_t n = c.capacity;
  const int32_t slot = row_slot[row];
  const int32_t* row_indices = indices + static_cast<int64_t>(row) * k;
  int32_t* row_out = out_slots + static_cast<int64_t>(row) * k;
  const int32_t p0 = min(n, rank * l.n_slice), p1 = min(n, p0 + l.n_slice);  // hot entries / positions owned
  const int32_t i0 = min(k, rank * l.k_slice), i1 = min(k, i0 + l.k_slice);  // indices (and miss ranks) owned
  const bool unbound = slot < 0 || slot >= t.max_slots || t.base[slot] == 0;
  const int32_t other = unbound ? -1 : SharedSlotRow(row_slot, gridDim.x / kCluster, row, slot);
  if (unbound || other >= 0) {  // the same answer in every block of the row
    for (int i = i0 + tid; i < i1; i += nt) row_out[i] = -1;
    if (rank == 0 && tid == 0) {
      c.miss_count[row] = 0;
      c.miss_m[row] = 0;
      if (unbound) Report(error, kErrorSlot, row, layer, -1, slot, 0);
      else Report(error, kErrorSharedSlot, row, layer, other, slot, 0);
      Publish(&c.tokens_ready[row]);
      Publish(&c.slots_ready[row]);
    }
    return;
  }
  auto touched = [&](int32_t h) -> int32_t* {
    const int owner = h / l.n_slice;
    return cluster.map_shared_rank(s_touched + (h - owner * l.n_slice), owner);
  };
  // Publishes this block's total of scan `which` to every block; after cluster.sync() each block
  // reads the others'.
  auto publish = [&](int which, int32_t total) {
    if (tid < kCluster) *cluster.map_shared_rank(s_totals + which * kCluster + rank, tid) = total;
  };
  if (tid == 0) s_hits = 0;
  const int64_t committed = t.committed[slot];
  const int64_t readable = committed < c.map_tokens ? committed : c.map_tokens;
  const int64_t cb = (static_cast<int64_t>(slot) * t.layers + layer) * n;
  int32_t* where = c.where + (static_cast<int64_t>(slot) * t.layers + layer) * c.map_tokens;
  for (int p = p0 + tid; p < p1; p += nt) {
    s_order[p - p0] = c.order[cb + p];
    s_touched[p - p0] = 0;
  }
  cluster.sync();
  // 1. Hits and marked misses of this block's indices.
  unsigned long long hits = 0;
  for (int i = i0 + tid; i < i1; i += nt) {
    const int32_t token = row_indices[i];
    int32_t out = -1;
    if (token == -1) {
    } else if (token < -1 || token >= readable) {
      Report(error, kErrorIndex, row, layer, token, slot, readable);
    } else {
      const int32_t h = where[token];
      if (h >= 0) {
        out = h;
        *touched(h) = 1;
        ++hits;
      } else {
        atomicMin(&where[token], MissMark(i));
        out = kPendingMiss;
      }
    }
    s_out[i - i0] = out;
  }
  cluster.sync();
  // 2. Ranks of the distinct misses, in order of first appearance across the row.
  for (int i = i0 + tid; i < i1; i += nt) {
    int first = 0;
    if (s_out[i - i0] == kPendingMiss) {
      first = where[row_indices[i]] == MissMark(i) ? 1 : 0;
      if (!first) ++hits;
    }
    s_scan[i - i0] = first;
  }
  __syncthreads();
  publish(0, BlockExclusiveScan(s_scan, i1 - i0, s_parts));
  cluster.sync();
  int32_t miss_before = 0, m = 0;
  for (int r = 0; r < kCluster; ++r) {
    miss_before += r < rank ? s_totals[r] : 0;
    m += s_totals[r];
  }
  for (int i = i0 + tid; i < i1; i += nt) {
    // First occurrences, read off the scan (every rank below m is written exactly once).
    const int32_t next = i + 1 < i1 ? s_scan[i + 1 - i0] : s_totals[rank];
    if (next == s_scan[i - i0]) continue;
    const int32_t j = miss_before + s_scan[i - i0];
    const int owner = j / l.k_slice;
    *cluster.map_shared_rank(s_misstok + (j - owner * l.k_slice), owner) = row_indices[i];
  }
  // 3. Victims: untouched entries from the least-recently-used end. This block's positions, read
  //    from the LRU end (u = 0 is position p1 - 1), come after those of every higher rank.
  const int32_t len = p1 - p0;
  for (int u = tid; u < len; u += nt) s_scan[u] = *touched(s_order[len - 1 - u]) ? 0 : 1;
  __syncthreads();
  publish(1, BlockExclusiveScan(s_scan, len, s_parts));
  cluster.sync();
  // The misses are all ranked now: hand them to the copy kernel, which starts reading the pool.
  for (int j = i0 + tid; j < min(i1, m); j += nt) {
    c.miss_tokens[static_cast<int64_t>(row) * c.max_k + j] = s_misstok[j - i0];
  }
  __threadfence();
  int32_t untouched_before = 0, untouched = 0;
  for (int r = 0; r < kCluster; ++r) {
    untouched_before += r > rank ? s_totals[kCluster + r] : 0;
    untouched += s_totals[kCluster + r];
  }
  for (int u = tid; u < len; u += nt) {
    const int32_t h = s_order[len - 1 - u];
    if (*touched(h)) continue;
    const int32_t j = untouched_before + s_scan[u];
    if (j >= m) continue;
    const int owner = j / l.k_slice;
    *cluster.map_shared_rank(s_victims + (j - owner * l.k_slice), owner) = h;
  }
  cluster.sync();
  if (rank == 0 && tid == 0) {  // every block's miss tokens are out: the copy starts reading the pool
    c.miss_m[row] = m;
    Publish(&c.tokens_ready[row]);
  }
  // 4. This block's share of the misses moves in.
  const int32_t filled = m < untouched ? m : untouched;
  for (int j = i0 + tid; j < min(i1, m); j += nt) {
    const int32_t token = s_misstok[j - i0];
    if (j < filled) {
      const int32_t h = s_victims[j - i0];
      const int32_t old = c.tokens[cb + h];
      if (old >= 0 && old < c.map_tokens) where[old] = kEmpty;
      c.tokens[cb + h] = token;
      where[token] = h;
      *touched(h) = 1;
      c.miss_tokens[static_cast<int64_t>(row) * c.max_k + j] = token;
      c.miss_slots[static_cast<int64_t>(row) * c.max_k + j] = h;
    } else {
      where[token] = kEmpty;
    }
  }
  if (rank == 0 && tid == 0) {
    c.miss_count[row] = filled;
    if (untouched < m) Report(error, kErrorCapacity, row, layer, m, slot, untouched);
  }
  __threadfence();
  cluster.sync();
  if (rank == 0 && tid == 0) Publish(&c.slots_ready[row]);
  // 5. Each index's hot entry.
  for (int i = i0 + tid; i < i1; i += nt) {
    int32_t out = s_out[i - i0];
    if (out == kPendingMiss) out = where[row_indices[i]];
    row_out[i] = out;
  }
  // 6. New recency order: touched first, each group in its previous order.
  for (int p = tid; p < len; p += nt) s_scan[p] = *touched(s_order[p]);
  __syncthreads();
  publish(2, BlockExclusiveScan(s_scan, len, s_parts));
  cluster.sync();  // also: no block reads another's shared memory after this
  int32_t touched_before = 0, touched_total = 0;
  for (int r = 0; r < kCluster; ++r) {
    touched_before += r < rank ? s_totals[2 * kCluster + r] : 0;
    touched_total += s_totals[2 * kCluster + r];
  }
  for (int p = tid; p < len; p += nt) {
    const int32_t h = s_order[p];
    const int32_t before = touched_before + s_scan[p];  // touched entries ahead of position p0 + p
    // This position's flag, from the exclusive scan (the others' shared memory is off limits now).
    const int32_t next = p + 1 < len ? s_scan[p + 1] : s_totals[2 * kCluster + rank];
    const int32_t at = next != s_scan[p] ? before : touched_total + (p0 + p - before);
    c.order[cb + at] = h;
  }
  if (count) {
    atomicAdd(&s_hits, hits);
    __syncthreads();
    if (tid == 0) {
      atomicAdd(&c.counters[2 * layer], s_hits);
      if (rank == 0) atomicAdd(&c.counters[2 * layer + 1], static_cast<unsigned long long>(filled));
    }
  }
}

// Copies a row's misses from the pool into their hot entries. Launched right behind the lookup
// (programmatic dependent launch): each warp reads its first miss from the pool as soon as the
// lookup has ranked the misses, while the lookup still picks victims, and stores it once the hot
// entries are known. Without the early launch (other GPUs, graphs) the flags are already set.
template <typename V>
__global__ void CopyMissesKernel(DeviceTables t, CacheState c, int32_t layer, const int32_t* __restrict__ row_slot,
                                 DeviceError* error) {
  constexpr int kHeld = 4;  // vectors per lane of the first entry read early
  const int32_t row = blockIdx.y;
  const int lane = threadIdx.x % kWarp;
  const int vec = t.entry_bytes / static_cast<int>(sizeof(V));
  const int warps = gridDim.x * (blockDim.x / kWarp);
  const int first = (blockIdx.x * blockDim.x + threadIdx.x) / kWarp;
  const int32_t slot = row_slot[row];
  bool ok = Await(&c.tokens_ready[row]);
  const int32_t m = ok ? c.miss_m[row] : 0;
  V held[kHeld];
  const V* first_src = nullptr;
  if (first < m) {
    first_src = reinterpret_cast<const V*>(EntryAddress(t, slot, layer, c.miss_tokens[static_cast<int64_t>(row) * c.max_k + first]));
#pragma unroll
    for (int q = 0; q < kHeld; ++q) {
      const int v = lane + q * kWarp;
      if (v < vec) held[q] = first_src[v];
    }
  }
  ok = ok && Await(&c.slots_ready[row]);
  if (!ok) {
    if (lane == 0) Report(error, kErrorCopyWait, row, layer, -1, slot, 0);
  } else {
    const int32_t filled = c.miss_count[row];
    const int64_t cb = (static_cast<int64_t>(slot) * t.layers + layer) * c.capacity;
    for (int j = first; j < filled; j += warps) {
      const int64_t at = static_cast<int64_t>(row) * c.max_k + j;
      V* out = reinterpret_cast<V*>(c.hot + (cb + c.miss_slots[at]) * t.entry_bytes);
      if (j == first) {
#pragma unroll
        for (int q = 0; q < kHeld; ++q) {
          const int v = lane + q * kWarp;
          if (v < vec) out[v] = held[q];
        }
        for (int v = lane + kHeld * kWarp; v < vec; v += kWarp) out[v] = first_src[v];
      } else {
        CopyEntry(out, reinterpret_cast<const V*>(EntryAddress(t, slot, layer, c.miss_tokens[at])), vec, lane);
      }
    }
  }
  // The row's last warp clears its flags for the next lookup (which is stream-ordered after us).
  __syncwarp();
  if (lane == 0) {
    __threadfence();
    if (atomicAdd(&c.done[row], 1) == warps - 1) {
      c.done[row] = 0;
      c.tokens_ready[row] = 0;
      c.slots_ready[row] = 0;
      __threadfence();
    }
  }
}

__global__ void ResetSlotKernel(CacheState c, int32_t slot, int32_t layers) {
  const int64_t per_slot = static_cast<int64_t>(layers) * c.capacity;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_slot; i += stride) {
    c.tokens[slot * per_slot + i] = -1;
    c.order[slot * per_slot + i] = static_cast<int32_t>(i % c.capacity);
  }
  const int64_t map_per_slot = static_cast<int64_t>(layers) * c.map_tokens;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < map_per_slot; i += stride) {
    c.where[slot * map_per_slot + i] = kEmpty;
  }
}

int Blocks(int64_t warps_of_work, int threads) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t per_block = threads / kWarp;
  const int64_t want = (warps_of_work + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(sms) * 8;
  return static_cast<int>(want < 1 ? 1 : (want > cap ? cap : want));
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

size_t LookupSharedBytes(int32_t capacity, int32_t k) { return MakeClusterLayout(capacity, k, 1).bytes + 64; }

void LaunchLookup(const DeviceTables& t, const CacheState& c, cudaStream_t stream, int32_t layer,
                  const int32_t* indices, int32_t batch, int32_t k, const int32_t* row_slot, int32_t* out_slots,
                  bool count, DeviceError* error) {
  if (batch == 0 || k == 0) return;
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  int cluster_size = c.blocks_per_row;
  // Measured on an H100 (132 SMs): 16-block clusters win at batch 1-2, 8-block ones while the
  // rows' clusters fit the SMs (batch 8: 0.49 x cold vs 0.56 x one block per row); beyond,
  // one block per row (batch 32: 0.33 x, where 4-block clusters gave 0.39 x).
  if (cluster_size == 0) cluster_size = batch * 16 * 4 <= sms ? 16 : batch * 8 <= sms ? 8 : 1;
  auto launch = [&](auto kernel, int cluster) {
    const ClusterLayout cl = MakeClusterLayout(c.capacity, k, cluster);
    // Raise each kernel's shared-memory limit once per size (a driver call, not per launch).
    static thread_local size_t raised[kMaxCluster + 1] = {};
    if (cl.bytes > raised[cluster]) {
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cl.bytes));
      if (cluster > 8) cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      raised[cluster] = cl.bytes;
    }
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(batch * cluster);
    config.blockDim = dim3(LookupThreads(cluster));
    config.dynamicSmemBytes = cl.bytes;
    config.stream = stream;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = cluster;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, t, c, cl, layer, indices, k, row_slot, out_slots, count, error);
  };
  if (cluster_size == 16 && launch(ClusterLookupKernel<16>, 16) == cudaSuccess) {
    // a 16-block cluster (non-portable; Hopper schedules it on one GPC)
  } else if (cluster_size == 1) {
    launch(ClusterLookupKernel<1>, 1);
  } else if (cluster_size == 2) {
    launch(ClusterLookupKernel<2>, 2);
  } else if (cluster_size == 4) {
    launch(ClusterLookupKernel<4>, 4);
  } else {
    (void)cudaGetLastError();  // 8, or a device that cannot hold 16-block clusters: 8 (portable)
    launch(ClusterLookupKernel<8>, 8);
  }
  // The copy waits on flags the lookup sets: it must not run if the lookup did not launch.
  if (cudaPeekAtLastError() != cudaSuccess) return;
  constexpr int kThreads = 256;
  const int per_row = Blocks(k, kThreads) / (batch > 0 ? batch : 1) + 1;
  auto copy = [&](auto kernel) {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(per_row, batch);
    config.blockDim = dim3(kThreads);
    config.stream = stream;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    cudaLaunchKernelEx(&config, kernel, t, c, layer, row_slot, error);
  };
  if (t.entry_bytes % 16 == 0 && t.stride % 16 == 0) {
    copy(CopyMissesKernel<uint4>);
  } else if (t.entry_bytes % 4 == 0) {
    copy(CopyMissesKernel<uint32_t>);
  } else {
    copy(CopyMissesKernel<uint8_t>);
  }
}

void LaunchResetSlot(const CacheState& c, cudaStream_t stream, int32_t slot, int32_t layers) {
  ResetSlotKernel<<<256, 256, 0, stream>>>(c, slot, layers);
}

}  // namespace sparsekv::cuda
