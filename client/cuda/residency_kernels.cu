// The residency cache's kernels: the lookup (exact LRU, the same decisions as ResidencyReference)
// and the miss copy launched right behind it, and the slot reset. They share per-SM state and
// hand-off flags in device memory, so they live in one translation unit.
#include "client/cuda/kernels_device.cuh"

namespace sparsekv::cuda {
namespace {

// In-place exclusive scans of a[0, na) and b[0, nb) in shared memory, together, by the whole
// block; returns both totals. `parts` holds 2 * (threads / 32) ints.
__device__ int2 BlockExclusiveScan2(int32_t* a, int na, int32_t* b, int nb, int32_t* parts) {
  const int tid = threadIdx.x, nt = blockDim.x, nw = nt / kWarp;
  const int n = na > nb ? na : nb;
  const int chunk = (n + nt - 1) / nt;
  const int begin = min(n, tid * chunk), end = min(n, begin + chunk);
  int la = 0, lb = 0;
  for (int i = begin; i < end; ++i) {
    la += i < na ? a[i] : 0;
    lb += i < nb ? b[i] : 0;
  }
  // Warp-inclusive scans of the per-thread sums, then across warps.
  int ia = la, ib = lb;
  const int lane = tid % kWarp, warp = tid / kWarp;
  for (int d = 1; d < kWarp; d <<= 1) {
    const int ua = __shfl_up_sync(0xffffffffu, ia, d);
    const int ub = __shfl_up_sync(0xffffffffu, ib, d);
    if (lane >= d) {
      ia += ua;
      ib += ub;
    }
  }
  if (lane == kWarp - 1) {
    parts[warp] = ia;
    parts[nw + warp] = ib;
  }
  __syncthreads();
  if (warp == 0) {
    int va = lane < nw ? parts[lane] : 0, vb = lane < nw ? parts[nw + lane] : 0;
    for (int d = 1; d < kWarp; d <<= 1) {
      const int ua = __shfl_up_sync(0xffffffffu, va, d);
      const int ub = __shfl_up_sync(0xffffffffu, vb, d);
      if (lane >= d) {
        va += ua;
        vb += ub;
      }
    }
    if (lane < nw) {  // inclusive totals per warp
      parts[lane] = va;
      parts[nw + lane] = vb;
    }
  }
  __syncthreads();
  int ra = (warp > 0 ? parts[warp - 1] : 0) + ia - la, rb = (warp > 0 ? parts[nw + warp - 1] : 0) + ib - lb;
  for (int i = begin; i < end; ++i) {
    if (i < na) {
      const int x = a[i];
      a[i] = ra;
      ra += x;
    }
    if (i < nb) {
      const int x = b[i];
      b[i] = rb;
      rb += x;
    }
  }
  const int2 total = make_int2(parts[nw - 1], parts[2 * nw - 1]);
  __syncthreads();
  return total;
}

// A pending miss's entry in the lookup's per-index scratch: kPendingMiss for the first
// occurrence of its token in the row, kDuplicateBase - f for a repeat of the index at f.
constexpr int32_t kPendingMiss = -2;
constexpr int32_t kDuplicateBase = -3;

// Lookup blocks resident on each SM (indexed by %smid), for the miss copy: a copy block that
// shares its SM with a lookup block reads nothing from the pool before its row's hot entries are
// known, since its reads from host memory (microseconds each over PCIe) would queue the lookup's
// own loads behind them. A hint only: a stale count costs speed, never correctness.
constexpr int kMaxSms = 1024;
__device__ int32_t g_lookups_on_sm[kMaxSms];
__device__ __forceinline__ int32_t* LookupsOnThisSm() {
  uint32_t id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return &g_lookups_on_sm[id % kMaxSms];
}

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

// Called by every thread of a block once its part of a hand-off is written: the last block of
// the row to arrive (of `blocks`) runs `last` (thread 0) and resets the counter for the next lookup.
// The block's barrier orders its threads' writes before thread 0's fence, which makes them
// visible device-wide before the arrival (the pattern of cooperative groups' grid sync).
// `each` runs first in thread 0 of every block.
template <typename E, typename F>
__device__ __forceinline__ void ArriveLast(int32_t* counter, int blocks, E each, F last) {
  __syncthreads();
  if (threadIdx.x == 0) {
    each();
    __threadfence();
    if (atomicAdd(counter, 1) == blocks - 1) {
      *counter = 0;  // for the next lookup (a kernel boundary away)
      last();
    }
  }
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
// owning a slice of the recency positions, of the hot entries' touched flags (in its shared
// memory, written and read by the others through distributed shared memory) and of the k
// indices. The token -> hot entry map (c.where, kept across steps) answers hits with one load
// per index. Four cluster barriers: after loading the order, after marking hits and misses,
// after one scan that ranks the distinct misses and the untouched entries together (from which
// every entry's new recency position follows in closed form), and after the victims are known.
// Decisions equal ResidencyReference entry for entry, for every cluster size (GPU tests).
constexpr int kMaxCluster = 16;
constexpr int kMaxLookupThreads = 1024;
// Threads per block: a lone block per row takes the most; clusters spread the row already.
constexpr int LookupThreads(int cluster) { return cluster == 1 ? kMaxLookupThreads : 512; }

struct ClusterLayout {
  int32_t n_slice = 0, k_slice = 0;
  size_t order, touched, free, tok, first, out, misstok, victims, parts, totals, bytes;
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
  l.free = take(4ul * l.n_slice);
  l.tok = take(4ul * l.k_slice);
  l.first = take(4ul * l.k_slice);
  l.out = take(4ul * l.k_slice);
  l.misstok = take(4ul * l.k_slice);
  l.victims = take(4ul * l.k_slice);
  l.parts = take(4ul * 2 * (kMaxLookupThreads / kWarp));
  l.totals = take(4ul * 2 * kMaxCluster);
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
  int32_t* s_order = reinterpret_cast<int32_t*>(smem + l.order);      // [n_slice] hot entry at each owned position
  int32_t* s_touched = reinterpret_cast<int32_t*>(smem + l.touched);  // [n_slice] owned hot entries hit this step
  int32_t* s_free = reinterpret_cast<int32_t*>(smem + l.free);        // [n_slice] untouched, from the LRU end; scanned
  int32_t* s_tok = reinterpret_cast<int32_t*>(smem + l.tok);          // [k_slice] owned indices
  int32_t* s_first = reinterpret_cast<int32_t*>(smem + l.first);      // [k_slice] first occurrence of a miss; scanned
  int32_t* s_out = reinterpret_cast<int32_t*>(smem + l.out);          // [k_slice] hot entry, -1, or pending
  int32_t* s_misstok = reinterpret_cast<int32_t*>(smem + l.misstok);  // [k_slice] token of miss rank j (owned ranks)
  int32_t* s_victims = reinterpret_cast<int32_t*>(smem + l.victims);  // [k_slice] hot entry of miss rank j
  int32_t* s_parts = reinterpret_cast<int32_t*>(smem + l.parts);
  int32_t* s_totals = reinterpret_cast<int32_t*>(smem + l.totals);  // [2][kCluster]: misses, untouched per block
  __shared__ unsigned s_hits;
  if (threadIdx.x == 0) {
    atomicAdd(LookupsOnThisSm(), 1);
    __threadfence();
  }
  __syncthreads();
  cudaTriggerProgrammaticLaunchCompletion();  // the miss copy may start: it waits on the flags

  const int tid = threadIdx.x, nt = blockDim.x;
  const int rank = static_cast<int>(cluster.block_rank());
  const int32_t row = blockIdx.x / kCluster;
  const int32_t n = c.capacity;
  const int32_t slot = row_slot[row];
  const int32_t* row_indices = indices + static_cast<int64_t>(row) * k;
  int32_t* row_out = out_slots + static_cast<int64_t>(row) * k;
  const int32_t p0 = min(n, rank * l.n_slice), p1 = min(n, p0 + l.n_slice);  // positions owned
  const int32_t i0 = min(k, rank * l.k_slice), i1 = min(k, i0 + l.k_slice);  // indices (and miss ranks) owned
  const int32_t len = p1 - p0, k_len = i1 - i0;
  const bool unbound = slot < 0 || slot >= t.max_slots || t.base[slot] == 0;
  const int32_t other = unbound ? -1 : SharedSlotRow(row_slot, gridDim.x / kCluster, row, slot);
  if (unbound || other >= 0) {  // the same answer in every block of the row
    for (int i = i0 + tid; i < i1; i += nt) {
      row_out[i] = -1;
      c.pending[static_cast<int64_t>(row) * c.max_k + i] = -1;
    }
    ArriveLast(&c.arrived[2 * row], kCluster, [] {}, [&] {
      if (unbound) Report(error, kErrorSlot, row, layer, -1, slot, 0);
      else Report(error, kErrorSharedSlot, row, layer, other, slot, 0);
      Publish(&c.slots_ready[row]);
    });
    if (tid == 0) atomicSub(LookupsOnThisSm(), 1);
    return;
  }
  // The touched flag of hot entry h, in the shared memory of the block owning h.
  auto touched = [&](int32_t h) -> int32_t* {
    const int owner = h / l.n_slice;
    return cluster.map_shared_rank(s_touched + (h - owner * l.n_slice), owner);
  };
  if (tid == 0) s_hits = 0;
  const int64_t committed = t.committed[slot];
  const int64_t readable = committed < c.map_tokens ? committed : c.map_tokens;
  const int64_t cb = (static_cast<int64_t>(slot) * t.layers + layer) * n;
  int32_t* where = c.where + (static_cast<int64_t>(slot) * t.layers + layer) * c.map_tokens;
  for (int p = tid; p < len; p += nt) {
    s_order[p] = c.order[cb + p0 + p];
    s_touched[p] = 0;
  }
  cluster.sync();  // (1) every block runs and its flags are clear
  // Hits, and misses marked in the token map (the smallest index of a token wins).
  unsigned hits = 0;
  for (int i = tid; i < k_len; i += nt) {
    const int32_t token = row_indices[i0 + i];
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
        atomicMin(&where[token], MissMark(i0 + i));
        out = kPendingMiss;
      }
    }
    s_tok[i] = token;
    s_out[i] = out;
    c.pending[static_cast<int64_t>(row) * c.max_k + i0 + i] = out == kPendingMiss ? token : -1;
  }
  cluster.sync();  // (2) hits and marks are in
  // One scan ranks the first occurrences of missed tokens (in index order across the row) and
  // the untouched hot entries (from the LRU end: u = 0 is position p1 - 1; this block's come
  // after those of every higher rank).
  for (int i = tid; i < k_len; i += nt) {
    int first = 0;
    if (s_out[i] == kPendingMiss) {
      const int32_t f = where[s_tok[i]] - INT32_MIN;
      if (f == i0 + i) {
        first = 1;
      } else {
        s_out[i] = kDuplicateBase - f;
        ++hits;  // a repeat of a miss is served by the same fetch
      }
    }
    s_first[i] = first;
  }
  for (int u = tid; u < len; u += nt) s_free[u] = *touched(s_order[len - 1 - u]) ? 0 : 1;
  __syncthreads();
  const int2 mine = BlockExclusiveScan2(s_first, k_len, s_free, len, s_parts);
  if (tid < kCluster) {
    int32_t* to = cluster.map_shared_rank(s_totals, tid);
    to[rank] = mine.x;
    to[kCluster + rank] = mine.y;
  }
  cluster.sync();  // (3) every block's totals are in
  int32_t miss_before = 0, m = 0, untouched_after = 0, untouched = 0;
  for (int r = 0; r < kCluster; ++r) {
    miss_before += r < rank ? s_totals[r] : 0;
    m += s_totals[r];
    untouched_after += r > rank ? s_totals[kCluster + r] : 0;
    untouched += s_totals[kCluster + r];
  }
  const int32_t filled = m < untouched ? m : untouched;
  // Distinct misses: rank j, in the token map's order of first appearance, to the block owning rank j.
  for (int i = tid; i < k_len; i += nt) {
    const int32_t next = i + 1 < k_len ? s_first[i + 1] : mine.x;
    if (next == s_first[i]) continue;
    const int32_t j = miss_before + s_first[i];
    const int owner = j / l.k_slice;
    *cluster.map_shared_rank(s_misstok + (j - owner * l.k_slice), owner) = s_tok[i];
  }
  // Victims and the new recency order. Untouched entries from the LRU end are the victims, in
  // miss rank order; the new order puts touched entries (hits and victims) first, each group in
  // its previous order. With r(P) the untouched entries at positions >= P, the touched ones before
  // P number P - untouched + max(r(P), filled), and the untouched ones untouched - max(r(P), filled).
  for (int u = tid; u < len; u += nt) {
    const int32_t p = len - 1 - u, pos = p0 + p, h = s_order[p];
    const int32_t after = untouched_after + s_free[u];  // untouched entries at positions > pos
    const bool free = (u + 1 < len ? s_free[u + 1] : mine.y) != s_free[u];
    const bool victim = free && after < filled;
    if (victim) {
      const int owner = after / l.k_slice;
      *cluster.map_shared_rank(s_victims + (after - owner * l.k_slice), owner) = h;
      const int32_t old = c.tokens[cb + h];
      if (old >= 0 && old < c.map_tokens) where[old] = kEmpty;
    }
    const int32_t r = after + (free ? 1 : 0);
    const int32_t at = (!free || victim) ? pos - untouched + max(r, filled) : n + filled - max(r, filled);
    c.order[cb + at] = h;
  }
  cluster.sync();  // (4) victims and miss tokens are in every owner's shared memory
  // This block's share of the misses moves in.
  for (int jj = tid; jj < min(k_len, m - i0); jj += nt) {
    const int32_t j = i0 + jj, token = s_misstok[jj];
    if (j < filled) {
      const int32_t h = s_victims[jj];
      c.tokens[cb + h] = token;
      where[token] = h;
    } else {
      where[token] = kEmpty;
    }
  }
  // Each index's hot entry: a miss's from its rank's victim (a repeat's rank from its first occurrence).
  for (int i = tid; i < k_len; i += nt) {
    int32_t out = s_out[i];
    if (out <= kPendingMiss) {
      const int32_t f = out == kPendingMiss ? i0 + i : kDuplicateBase - out;
      const int fo = f / l.k_slice;
      int32_t j = *cluster.map_shared_rank(s_first + (f - fo * l.k_slice), fo);
      for (int r = 0; r < fo; ++r) j += s_totals[r];
      const int vo = j / l.k_slice;
      out = j < filled ? *cluster.map_shared_rank(s_victims + (j - vo * l.k_slice), vo) : -1;
    }
    row_out[i0 + i] = out;
  }
  cluster.barrier_arrive();  // done with the others' shared memory (waited for before leaving)
  if (count) {  // one shared atomic per warp, one global one per block
    const unsigned warp_hits = __reduce_add_sync(0xffffffffu, hits);
    if (tid % kWarp == 0 && warp_hits != 0) atomicAdd(&s_hits, warp_hits);
  }
  ArriveLast(
      &c.arrived[2 * row + 1], kCluster,
      [&] {
        if (!count) return;
        atomicAdd(&c.counters[2 * layer], static_cast<unsigned long long>(s_hits));
        if (rank == 0) atomicAdd(&c.counters[2 * layer + 1], static_cast<unsigned long long>(filled));
      },
      [&] {  // every miss has its hot entry: the copy stores
        if (untouched < m) Report(error, kErrorCapacity, row, layer, m, slot, untouched);
        Publish(&c.slots_ready[row]);
      });
  cluster.barrier_wait();
  if (tid == 0) atomicSub(LookupsOnThisSm(), 1);
}

// Sure misses a copy warp reads early into shared memory, beyond the two it holds in registers,
// so the bus stays busy while the lookup runs beside the copy.
constexpr int kCopyStage = 6;

// Which entry and vector a lane's held register q carries: with two entries held (each at most
// two vectors per lane), entry q / 2 and vector lane + (q % 2) * 32; else entry 0, vector lane + q * 32.
__device__ __forceinline__ int HeldEntry(int q, bool two) { return two ? q / 2 : 0; }
__device__ __forceinline__ int HeldVector(int q, bool two, int lane) { return lane + (two ? q % 2 : q) * kWarp; }

// Copies a row's misses from the pool into their hot entries: a warp per index (several when
// the batch is large), storing at the hot entry the lookup gave it (out_slots) the entry of each
// index that missed (c.pending). Launched right behind the lookup (programmatic dependent
// launch), each warp reads the entries of its first indices that miss for sure at once, before
// the lookup has decided anything: two into registers, up to `stage` more into shared memory. A
// token absent from the token map, or marked missing in it by the running lookup, misses for
// sure (a token the map has may yet be a miss the lookup has already placed; such indices wait
// for pending). Once the lookup has published the row's hot entries, the held and staged entries
// are stored and the rest are read and stored. Repeats of a missed token in a row store the same
// bytes to the same entry. Where the launch is not early, the lookup has finished and the map
// already places this step's misses: they are all read late.
template <typename V>
__global__ void __launch_bounds__(256, 4)  // four blocks an SM: 64 registers a thread
    CopyMissesKernel(DeviceTables t, CacheState c, int32_t layer, const int32_t* __restrict__ indices,
                     const int32_t* __restrict__ row_slot, const int32_t* __restrict__ out_slots, int32_t k,
                     DeviceError* error, int32_t stage) {
  extern __shared__ __align__(16) unsigned char s_stage[];  // [warps per block][stage][entry_bytes]
  constexpr int kHeld = 4;  // vectors per lane read early: two entries of up to 2 vectors per lane, or one
  const int32_t row = blockIdx.y;
  const int lane = threadIdx.x % kWarp;
  const int vec = t.entry_bytes / static_cast<int>(sizeof(V));
  const int warps = gridDim.x * (blockDim.x / kWarp);
  const int w0 = (blockIdx.x * blockDim.x + threadIdx.x) / kWarp;
  const int32_t slot = row_slot[row];
  const bool bound = slot >= 0 && slot < t.max_slots && t.base[slot] != 0;
  const int32_t* pending = c.pending + static_cast<int64_t>(row) * c.max_k;
  const int32_t* outs = out_slots + static_cast<int64_t>(row) * k;
  const bool two = vec <= 2 * kWarp;  // the first two indices' entries fit the held registers
  __shared__ int s_early, s_ok;
  if (threadIdx.x == 0) s_early = *reinterpret_cast<volatile int32_t*>(LookupsOnThisSm()) == 0;
  __syncthreads();
  V held[kHeld];
  const V* src0 = nullptr;
  const V* src1 = nullptr;
  const int held_n = two ? 2 : 1;
  V* my_stage = reinterpret_cast<V*>(s_stage + static_cast<size_t>(threadIdx.x / kWarp) * stage * t.entry_bytes);
  uint32_t staged = 0;  // bit j: the warp's index held_n + j is in my_stage[j]
  if (s_early != 0 && bound) {  // no lookup block on this SM: read the sure misses now
    const int64_t committed = t.committed[slot];
    const int64_t readable = committed < c.map_tokens ? committed : c.map_tokens;
    const int32_t* where = c.where + (static_cast<int64_t>(slot) * t.layers + layer) * c.map_tokens;
    const int32_t* row_indices = indices + static_cast<int64_t>(row) * k;
    // Lane j resolves the warp's index j (a chain of dependent loads, all lanes at once).
    const V* mine = nullptr;
    if (lane < held_n + stage) {
      const int i = w0 + lane * warps;
      const int32_t token = i < k ? row_indices[i] : -1;
      if (token >= 0 && token < readable && *reinterpret_cast<const volatile int32_t*>(&where[token]) < 0) {
        mine = reinterpret_cast<const V*>(EntryAddress(t, slot, layer, token));
      }
    }
    src0 = reinterpret_cast<const V*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(mine), 0));
    if (two) src1 = reinterpret_cast<const V*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(mine), 1));
#pragma unroll
    for (int q = 0; q < kHeld; ++q) {
      const V* from = HeldEntry(q, two) == 0 ? src0 : src1;
      const int v = HeldVector(q, two, lane);
      if (from != nullptr && v < vec) held[q] = from[v];
    }
    for (int j = 0; j < stage; ++j) {
      const V* from = reinterpret_cast<const V*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(mine), held_n + j));
      if (from == nullptr) continue;
      CopyEntry(my_stage + static_cast<size_t>(j) * vec, from, vec, lane);
      staged |= 1u << j;
    }
  }
  // One thread of the block waits for the flag (thousands of pollers would crowd the lookup's
  // own memory traffic); the barrier hands the answer to the others.
  if (threadIdx.x == 0) s_ok = Await(&c.slots_ready[row]);
  __syncthreads();
  if (s_ok == 0) {
    if (lane == 0) Report(error, kErrorCopyWait, row, layer, -1, slot, 0);
  } else if (bound) {
    const int64_t cb = (static_cast<int64_t>(slot) * t.layers + layer) * c.capacity;
    int e = 0;
    for (int i = w0; i < k; i += warps, ++e) {
      // An entry held from the early read missed for sure; the others are looked up in pending
      // (token 0 below stands for "held").
      const V* held_src = e == 0 ? src0 : (e == 1 && two ? src1 : nullptr);
      const bool in_stage = e >= held_n && e - held_n < stage && ((staged >> (e - held_n)) & 1u) != 0;
      const int32_t token = held_src != nullptr || in_stage ? 0 : pending[i];
      if (token < 0) continue;  // a hit, padding or an error
      const int32_t h = outs[i];
      if (h < 0) continue;  // no hot entry (more misses than evictable entries)
      V* out = reinterpret_cast<V*>(c.hot + (cb + h) * t.entry_bytes);
      if (in_stage) {
        for (int v = lane; v < vec; v += kWarp) out[v] = my_stage[static_cast<size_t>(e - held_n) * vec + v];
        continue;
      }
      if (held_src == nullptr) {
        CopyEntry(out, reinterpret_cast<const V*>(EntryAddress(t, slot, layer, token)), vec, lane);
        continue;
      }
#pragma unroll
      for (int q = 0; q < kHeld; ++q) {
        if (two && HeldEntry(q, two) != e) continue;  // (one entry held: it is entry 0)
        const int v = HeldVector(q, two, lane);
        if (v < vec) out[v] = held[q];
      }
      if (!two) {
        for (int v = lane + kHeld * kWarp; v < vec; v += kWarp) out[v] = held_src[v];
      }
    }
  }
  // The row's last block clears its flag for the next lookup (which is stream-ordered after us).
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(&c.done[row], 1) == static_cast<int>(gridDim.x) - 1) {
      c.done[row] = 0;
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

}  // namespace

size_t LookupSharedBytes(int32_t capacity, int32_t k) { return MakeClusterLayout(capacity, k, 1).bytes + 64; }

void LaunchLookup(const DeviceTables& t, const CacheState& c, cudaStream_t stream, int32_t layer,
                  const int32_t* indices, int32_t batch, int32_t k, const int32_t* row_slot, int32_t* out_slots,
                  bool count, DeviceError* error) {
  if (batch == 0 || k == 0) return;
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  int cluster_size = c.blocks_per_row;
  // Auto: 16-block clusters for the smallest batches, 8-block ones while the rows' clusters fit
  // the SMs, one block per row beyond (see sparsekv/cuda.h).
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
  // A warp per index while the GPU holds them all (48 of an SM's 64 warps, leaving room for the
  // lookup), fewer (several indices each) for large batches.
  constexpr int kThreads = 256;
  const int64_t row_warps = std::min<int64_t>(k, std::max<int64_t>(1, static_cast<int64_t>(sms) * 48 / batch));
  const int per_row = static_cast<int>((row_warps + kThreads / kWarp - 1) / (kThreads / kWarp));
  // Each warp stages up to kCopyStage more sure misses in shared memory (at most 40 KiB a block).
  const int stage = std::min<int>(kCopyStage, static_cast<int>(40960 / (kThreads / kWarp) / t.entry_bytes));
  const size_t stage_bytes = static_cast<size_t>(kThreads / kWarp) * stage * t.entry_bytes;
  auto copy = [&](auto kernel) {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(per_row, batch);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = stage_bytes;
    config.stream = stream;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    cudaLaunchKernelEx(&config, kernel, t, c, layer, indices, row_slot, static_cast<const int32_t*>(out_slots), k, error,
                       static_cast<int32_t>(stage));
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
