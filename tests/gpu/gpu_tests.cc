// The GPU path against the real daemon: device gathers byte-exact against Region::Fetch, growing
// regions, out-of-range indices, CUDA-graph replay, the residency cache against its CPU reference,
// and the staged path for network pools. Needs a CUDA device: without one the program says
// "SKIPPED: no CUDA device" and exits 77, which ctest reports as skipped.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "client/cuda/residency_reference.h"
#include "common/entry_pattern.h"
#include "sparsekv/cuda.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;
using sparsekv::cuda::DeviceBatch;
using sparsekv::cuda::ResidencyCache;

namespace {

constexpr int32_t kLayers = 3, kEntry = 656;

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { REQUIRE(cudaMalloc(&ptr, std::max<size_t>(1, count) * sizeof(T)) == cudaSuccess); }
  ~DeviceArray() { cudaFree(ptr); }
  void Put(const std::vector<T>& v) { REQUIRE(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess); }
  std::vector<T> Get() const {
    std::vector<T> v(n);
    REQUIRE(cudaMemcpy(v.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }
};

// `rows` sealed regions "<prefix><r>" of `tokens` tokens, region r filled with salt + r.
std::vector<std::shared_ptr<Region>> SealedPatternRegions(Client& client, const std::string& prefix, int rows,
                                                          int64_t tokens, uint64_t salt) {
  std::vector<std::shared_ptr<Region>> regions;
  for (int r = 0; r < rows; ++r) {
    auto made = MakePatternRegion(client, prefix + std::to_string(r), kLayers, kEntry, tokens, salt + r, true);
    REQUIRE(made.ok());
    regions.push_back(*made);
  }
  return regions;
}

// Each of a row's k indices (-1: padding, skipped), read through the hot entry the lookup gave
// it (slots), holds the bytes of the region filled with `salt` at (layer, token).
void RequireHotEntriesHold(const ResidencyCache& cache, int32_t slot, int32_t layer, int32_t capacity,
                           const int32_t* idx, const int32_t* slots, int32_t k, uint64_t salt) {
  std::vector<std::byte> hot(static_cast<size_t>(capacity) * kEntry), want(kEntry);
  REQUIRE(cudaMemcpy(hot.data(), cache.hot_buffer(slot, layer), hot.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  for (int32_t i = 0; i < k; ++i) {
    if (idx[i] < 0) continue;
    FillEntry(salt, layer, idx[i], kEntry, want.data());
    REQUIRE(std::memcmp(hot.data() + static_cast<size_t>(slots[i]) * kEntry, want.data(), kEntry) == 0);
  }
}

// The expected bytes of [rows][k] entries: Region::Fetch for real indices, zeros for -1.
std::vector<std::byte> Expected(const std::vector<std::shared_ptr<Region>>& rows, int32_t layer,
                                const std::vector<int32_t>& idx, int32_t k) {
  std::vector<std::byte> out(idx.size() * kEntry, std::byte{0});
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int32_t i = 0; i < k; ++i) {
      const int32_t t = idx[r * k + i];
      if (t < 0) continue;
      std::vector<int32_t> one = {t};
      REQUIRE(rows[r]->Fetch(layer, one, absl::MakeSpan(out.data() + (r * k + i) * kEntry, kEntry)).ok());
    }
  }
  return out;
}

std::vector<int32_t> MixedIndices(std::mt19937& rng, int32_t rows, int32_t k, int64_t tokens) {
  std::vector<int32_t> idx(static_cast<size_t>(rows) * k);
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t i = 0; i < k; ++i) {
      int32_t v;
      switch (i % 8) {
        case 0: v = -1; break;                                               // padding
        case 1: v = idx[r * k + i - 1] >= 0 ? idx[r * k + i - 1] : 0; break; // duplicate
        case 2: case 3: v = static_cast<int32_t>((i * 7) % tokens); break;   // adjacent runs
        default: v = static_cast<int32_t>(rng() % tokens);
      }
      idx[r * k + i] = v;
    }
  }
  return idx;
}

}  // namespace

TEST_CASE("device gather equals Region::Fetch for random, adjacent, duplicate and padded indices across pages and layers", "[gpu]") {
  DaemonFixture daemon({.pool_size = "256MiB"});
  auto client = daemon.NewClient();
  std::vector<std::shared_ptr<Region>> regions;
  for (int r = 0; r < 4; ++r) {
    auto made = MakePatternRegion(*client, "g" + std::to_string(r), kLayers, kEntry, 1500 + 300 * r, 70 + r, r % 2 == 0);
    REQUIRE(made.ok());
    regions.push_back(*made);
  }
  auto batch = DeviceBatch::Create(*client, {.max_slots = 8, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 8192});
  REQUIRE(batch.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  // Slots out of row order: rows name slots.
  const std::vector<int32_t> row_slot = {5, 0, 7, 2};
  for (int r = 0; r < 4; ++r) REQUIRE((*batch)->Bind(row_slot[r], regions[r], stream).ok());
  const int32_t k = 512;
  std::mt19937 rng(3);
  std::vector<int32_t> idx = MixedIndices(rng, 4, k, 1500);
  DeviceArray<int32_t> d_idx(idx.size()), d_slot(4);
  d_idx.Put(idx);
  d_slot.Put(row_slot);
  DeviceArray<std::byte> d_dst(idx.size() * kEntry);
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    REQUIRE((*batch)->Gather(stream, layer, d_idx.ptr, 4, k, d_slot.ptr, d_dst.ptr).ok());
    REQUIRE((*batch)->CheckErrors(stream).ok());
    REQUIRE(d_dst.Get() == Expected(regions, layer, idx, k));
  }
  // Explicit destination slots: reversed.
  std::vector<int32_t> dst_slots(idx.size());
  for (size_t e = 0; e < idx.size(); ++e) dst_slots[e] = static_cast<int32_t>(idx.size() - 1 - e);
  DeviceArray<int32_t> d_dst_slots(dst_slots.size());
  d_dst_slots.Put(dst_slots);
  REQUIRE((*batch)->Gather(stream, 1, d_idx.ptr, 4, k, d_slot.ptr, d_dst.ptr, d_dst_slots.ptr).ok());
  REQUIRE((*batch)->CheckErrors(stream).ok());
  auto want = Expected(regions, 1, idx, k);
  auto got = d_dst.Get();
  for (size_t e = 0; e < idx.size(); ++e) {
    REQUIRE(std::memcmp(got.data() + dst_slots[e] * kEntry, want.data() + e * kEntry, kEntry) == 0);
  }
  cudaStreamDestroy(stream);
}

TEST_CASE("device gather: a region growing between steps is read up to its new committed length after Sync", "[gpu]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  auto client = daemon.NewClient();
  auto region = MakePatternRegion(*client, "grow", kLayers, kEntry, 370, 9, false);  // just under a page
  REQUIRE(region.ok());
  auto batch = DeviceBatch::Create(*client, {.max_slots = 2, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 4096});
  REQUIRE(batch.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  REQUIRE((*batch)->Bind(1, *region, stream).ok());
  DeviceArray<int32_t> d_idx(1), d_slot(1);
  d_slot.Put({1});
  DeviceArray<std::byte> d_dst(kEntry);
  std::vector<std::byte> step(kLayers * kEntry);
  for (int64_t t = 370; t < 1200; ++t) {  // crosses page boundaries
    for (int32_t l = 0; l < kLayers; ++l) FillEntry(9, l, t, kEntry, step.data() + l * kEntry);
    REQUIRE((*region)->Append(step, 1).ok());
    if (t % 97 != 0) continue;
    REQUIRE((*batch)->Sync(stream).ok());
    d_idx.Put({static_cast<int32_t>(t)});
    REQUIRE((*batch)->Gather(stream, 2, d_idx.ptr, 1, 1, d_slot.ptr, d_dst.ptr).ok());
    REQUIRE((*batch)->CheckErrors(stream).ok());
    std::vector<std::byte> want(kEntry);
    FillEntry(9, 2, t, kEntry, want.data());
    REQUIRE(d_dst.Get() == want);
  }
  cudaStreamDestroy(stream);
}

TEST_CASE("device gather: an index past the committed length zero-fills, reads nothing and reports row, layer and index", "[gpu]") {
  DaemonFixture daemon({.pool_size = "64MiB"});
  auto client = daemon.NewClient();
  auto region = MakePatternRegion(*client, "short", kLayers, kEntry, 100, 4, true);
  REQUIRE(region.ok());
  auto batch = DeviceBatch::Create(*client, {.max_slots = 2, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 4096});
  REQUIRE(batch.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  REQUIRE((*batch)->Bind(0, *region, stream).ok());
  std::vector<int32_t> idx = {5, 100, 99, -3};
  DeviceArray<int32_t> d_idx(idx.size()), d_slot(1);
  d_idx.Put(idx);
  d_slot.Put({0});
  DeviceArray<std::byte> d_dst(idx.size() * kEntry);
  REQUIRE(cudaMemset(d_dst.ptr, 0x77, idx.size() * kEntry) == cudaSuccess);
  REQUIRE((*batch)->Gather(stream, 1, d_idx.ptr, 1, 4, d_slot.ptr, d_dst.ptr).ok());
  auto st = (*batch)->CheckErrors(stream);
  INFO(st.ToString());
  REQUIRE(st.code() == absl::StatusCode::kOutOfRange);
  REQUIRE(std::string(st.message()).find("layer 1") != std::string::npos);
  REQUIRE(std::string(st.message()).find("row 0") != std::string::npos);
  auto got = d_dst.Get();
  std::vector<std::byte> want(kEntry);
  FillEntry(4, 1, 5, kEntry, want.data());
  REQUIRE(std::memcmp(got.data(), want.data(), kEntry) == 0);
  for (int e : {1, 3}) {
    for (int b = 0; b < kEntry; ++b) REQUIRE(got[e * kEntry + b] == std::byte{0});
  }
  FillEntry(4, 1, 99, kEntry, want.data());
  REQUIRE(std::memcmp(got.data() + 2 * kEntry, want.data(), kEntry) == 0);
  REQUIRE((*batch)->CheckErrors(stream).ok());  // read and cleared
  // A row naming a slot with nothing bound.
  d_slot.Put({1});
  REQUIRE((*batch)->Gather(stream, 0, d_idx.ptr, 1, 1, d_slot.ptr, d_dst.ptr).ok());
  REQUIRE((*batch)->CheckErrors(stream).code() == absl::StatusCode::kInvalidArgument);
  cudaStreamDestroy(stream);
}

TEST_CASE("device gather captured in a CUDA graph and replayed 100 times with new indices equals the eager result", "[gpu]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  auto client = daemon.NewClient();
  const auto regions = SealedPatternRegions(*client, "graph", 2, 2000, 30);
  auto batch = DeviceBatch::Create(*client, {.max_slots = 2, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 4096});
  REQUIRE(batch.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (int r = 0; r < 2; ++r) REQUIRE((*batch)->Bind(r, regions[r], stream).ok());
  const int32_t k = 256;
  DeviceArray<int32_t> d_idx(2 * k), d_slot(2);
  d_slot.Put({0, 1});
  DeviceArray<std::byte> d_dst(2 * k * kEntry), d_eager(2 * k * kEntry);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  REQUIRE((*batch)->Gather(stream, 2, d_idx.ptr, 2, k, d_slot.ptr, d_dst.ptr).ok());
  REQUIRE((*batch)->EndStep(stream).ok());  // the lease check is part of the graph
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  std::mt19937 rng(11);
  for (int replay = 0; replay < 100; ++replay) {
    std::vector<int32_t> idx = MixedIndices(rng, 2, k, 2000);
    d_idx.Put(idx);
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE((*batch)->CheckErrors(stream).ok());
    REQUIRE((*batch)->Gather(stream, 2, d_idx.ptr, 2, k, d_slot.ptr, d_eager.ptr).ok());
    REQUIRE((*batch)->CheckErrors(stream).ok());
    auto graphed = d_dst.Get();
    REQUIRE(graphed == d_eager.Get());
    if (replay % 25 == 0) REQUIRE(graphed == Expected(regions, 2, idx, k));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_CASE("residency cache: hits, misses, victims and slots equal the CPU reference, and hot buffers stay byte-exact", "[gpu][residency]") {
  DaemonFixture daemon({.pool_size = "256MiB"});
  auto client = daemon.NewClient();
  constexpr int kRows = 3;
  constexpr int64_t kTokens = 6000;
  const auto regions = SealedPatternRegions(*client, "hot", kRows, kTokens, 50);
  auto batch = DeviceBatch::Create(*client, {.max_slots = 4, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 8192});
  REQUIRE(batch.ok());
  const int32_t capacity = 1024, k = 512;
  // Every lookup kernel: one block per row, and clusters of 2, 4, 8 and 16 blocks per row.
  const int32_t blocks_per_row = GENERATE(1, 2, 4, 8, 16);
  INFO("blocks per row: " << blocks_per_row);
  auto cache = ResidencyCache::Create(
      **batch, {.capacity = capacity, .max_k = k, .max_batch = kRows, .blocks_per_row = blocks_per_row});
  INFO(cache.status().ToString());
  REQUIRE(cache.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  const std::vector<int32_t> row_slot = {2, 0, 3};
  for (int r = 0; r < kRows; ++r) REQUIRE((*batch)->Bind(row_slot[r], regions[r], stream).ok());
  std::vector<std::vector<cuda::ResidencyReference>> ref(kRows);
  for (auto& per_row : ref) per_row.assign(kLayers, cuda::ResidencyReference(capacity));
  DeviceArray<int32_t> d_idx(kRows * k), d_slot(kRows), d_out(kRows * k);
  d_slot.Put(row_slot);
  std::mt19937 rng(21);
  std::vector<uint64_t> want_hits(kLayers), want_misses(kLayers);
  // A DSA-like trace: each step keeps a share of the previous step's tokens (more in layer 1).
  std::vector<std::vector<int32_t>> previous(kRows * kLayers);
  for (int step = 0; step < 30; ++step) {
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      std::vector<int32_t> idx(kRows * k);
      for (int r = 0; r < kRows; ++r) {
        auto& prev = previous[r * kLayers + layer];
        const double keep = layer == 0 ? 0.0 : (layer == 1 ? 0.8 : 0.4);
        for (int32_t i = 0; i < k; ++i) {
          int32_t v;
          if (!prev.empty() && (rng() % 1000) < keep * 1000) v = prev[rng() % prev.size()];
          else v = static_cast<int32_t>(rng() % kTokens);
          if (i % 64 == 63) v = -1;
          idx[r * k + i] = v;
        }
        prev.assign(idx.begin() + r * k, idx.begin() + (r + 1) * k);
      }
      d_idx.Put(idx);
      REQUIRE((*cache)->Lookup(stream, layer, d_idx.ptr, kRows, k, d_slot.ptr, d_out.ptr).ok());
      REQUIRE((*batch)->CheckErrors(stream).ok());
      auto slots = d_out.Get();
      for (int r = 0; r < kRows; ++r) {
        cuda::StepResult result;
        REQUIRE(ref[r][layer].Step(idx.data() + r * k, k, kTokens, &result));
        want_hits[layer] += result.hits;
        want_misses[layer] += result.misses;
        int32_t first_wrong = -1, wrong = 0;
        for (int32_t i = 0; i < k; ++i) {
          if (slots[r * k + i] != result.slots[i]) {
            if (first_wrong < 0) first_wrong = i;
            ++wrong;
          }
        }
        INFO("step " << step << ", layer " << layer << ", row " << r << ": " << wrong << " slots differ, first at index "
                     << first_wrong << " (token " << (first_wrong >= 0 ? idx[r * k + first_wrong] : 0) << "): got "
                     << (first_wrong >= 0 ? slots[r * k + first_wrong] : 0) << ", reference "
                     << (first_wrong >= 0 ? result.slots[first_wrong] : 0) << "; reference hits " << result.hits
                     << ", misses " << result.misses);
        REQUIRE(wrong == 0);
      }
      if (step % 10 == 9) {
        // Hot-buffer contents: each index's entry, read through its slot, is the region's bytes.
        for (int r = 0; r < kRows; ++r) {
          RequireHotEntriesHold(**cache, row_slot[r], layer, capacity, idx.data() + r * k, slots.data() + r * k, k, 50 + r);
          std::vector<int32_t> tokens, order;
          REQUIRE((*cache)->ReadState(stream, row_slot[r], layer, &tokens, &order).ok());
          REQUIRE(tokens == ref[r][layer].tokens());
          REQUIRE(order == ref[r][layer].order());
        }
      }
    }
  }
  auto counters = (*cache)->Counters(stream);
  REQUIRE(counters.ok());
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    INFO("layer " << layer << ": hits " << (*counters)[layer].hits << " misses " << (*counters)[layer].misses);
    REQUIRE((*counters)[layer].hits == want_hits[layer]);
    REQUIRE((*counters)[layer].misses == want_misses[layer]);
  }
  REQUIRE((*counters)[1].hits > (*counters)[0].hits);  // the overlap shows
  // Two rows naming one slot are refused with both rows named, and change nothing.
  {
    std::vector<int32_t> tokens_before, order_before, tokens_after, order_after;
    REQUIRE((*cache)->ReadState(stream, row_slot[1], 0, &tokens_before, &order_before).ok());
    DeviceArray<int32_t> two_slots(2), two_idx(2 * k), two_out(2 * k);
    two_slots.Put({row_slot[1], row_slot[1]});
    two_idx.Put(std::vector<int32_t>(2 * k, 5));
    REQUIRE((*cache)->Lookup(stream, 0, two_idx.ptr, 2, k, two_slots.ptr, two_out.ptr).ok());
    auto refused = (*batch)->CheckErrors(stream);
    CHECK(refused.code() == absl::StatusCode::kInvalidArgument);
    CHECK(refused.message().find("rows 0 and 1") != std::string::npos);
    CHECK(refused.message().find("name the same batch slot") != std::string::npos);
    for (int32_t v : two_out.Get()) CHECK(v == -1);
    REQUIRE((*cache)->ReadState(stream, row_slot[1], 0, &tokens_after, &order_after).ok());
    CHECK(tokens_after == tokens_before);
    CHECK(order_after == order_before);
  }
  // Warm-up and release.
  REQUIRE((*cache)->ReleaseSlot(stream, row_slot[0]).ok());
  REQUIRE((*cache)->Warm(stream, row_slot[0], 0, {1, 2, 3}).ok());
  std::vector<int32_t> tokens, order;
  REQUIRE((*cache)->ReadState(stream, row_slot[0], 0, &tokens, &order).ok());
  int resident = 0;
  for (int32_t t : tokens) resident += t >= 0 ? 1 : 0;
  REQUIRE(resident == 3);
  cudaStreamDestroy(stream);
}

TEST_CASE("residency cache captured in a CUDA graph: a step of lookups replayed with new indices equals the eager cache", "[gpu][residency][graph]") {
  DaemonFixture daemon({.pool_size = "256MiB"});
  auto client = daemon.NewClient();
  constexpr int kRows = 2;
  constexpr int64_t kTokens = 5000;
  const auto regions = SealedPatternRegions(*client, "graphhot", kRows, kTokens, 80);
  auto batch = DeviceBatch::Create(*client, {.max_slots = 4, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 8192});
  REQUIRE(batch.ok());
  const int32_t capacity = 1024, k = 512;
  auto eager = ResidencyCache::Create(**batch, {.capacity = capacity, .max_k = k, .max_batch = kRows});
  auto graphed = ResidencyCache::Create(**batch, {.capacity = capacity, .max_k = k, .max_batch = kRows});
  REQUIRE(eager.ok());
  REQUIRE(graphed.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  const std::vector<int32_t> row_slot = {3, 1};
  for (int r = 0; r < kRows; ++r) REQUIRE((*batch)->Bind(row_slot[r], regions[r], stream).ok());
  DeviceArray<int32_t> d_slot(kRows);
  d_slot.Put(row_slot);
  std::vector<std::unique_ptr<DeviceArray<int32_t>>> d_idx, d_eager, d_graph;  // per layer
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    d_idx.push_back(std::make_unique<DeviceArray<int32_t>>(kRows * k));
    d_eager.push_back(std::make_unique<DeviceArray<int32_t>>(kRows * k));
    d_graph.push_back(std::make_unique<DeviceArray<int32_t>>(kRows * k));
  }
  // One decode step's lookups, every layer, captured once (the host-side checks run at capture).
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    REQUIRE((*graphed)->Lookup(stream, layer, d_idx[layer]->ptr, kRows, k, d_slot.ptr, d_graph[layer]->ptr).ok());
  }
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  std::mt19937 rng(33);
  std::vector<std::vector<int32_t>> previous(kRows * kLayers);
  for (int step = 0; step < 40; ++step) {
    std::vector<std::vector<int32_t>> idx(kLayers, std::vector<int32_t>(kRows * k));
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      for (int r = 0; r < kRows; ++r) {
        auto& prev = previous[r * kLayers + layer];
        for (int32_t i = 0; i < k; ++i) {
          int32_t v = !prev.empty() && rng() % 10 < 6 ? prev[rng() % prev.size()] : static_cast<int32_t>(rng() % kTokens);
          if (i % 50 == 49) v = -1;
          idx[layer][r * k + i] = v;
        }
        prev.assign(idx[layer].begin() + r * k, idx[layer].begin() + (r + 1) * k);
      }
      d_idx[layer]->Put(idx[layer]);
      REQUIRE((*eager)->Lookup(stream, layer, d_idx[layer]->ptr, kRows, k, d_slot.ptr, d_eager[layer]->ptr).ok());
    }
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE((*batch)->CheckErrors(stream).ok());
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      INFO("step " << step << ", layer " << layer);
      const auto got = d_graph[layer]->Get();
      REQUIRE(got == d_eager[layer]->Get());
      if (step % 8 != 7) continue;
      // The replayed cache's hot entries hold the regions' bytes for every index of the step.
      for (int r = 0; r < kRows; ++r) {
        RequireHotEntriesHold(**graphed, row_slot[r], layer, capacity, idx[layer].data() + r * k, got.data() + r * k, k,
                              80 + r);
      }
    }
  }
  auto a = (*eager)->Counters(stream);
  auto b = (*graphed)->Counters(stream);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    CHECK((*b)[layer].hits == (*a)[layer].hits);
    CHECK((*b)[layer].misses == (*a)[layer].misses);
  }
  CHECK((*b)[1].hits > 0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_CASE("device gather over a network pool (tcp-gather) stages through pinned memory and equals Region::Fetch", "[gpu][tcp]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  auto client = daemon.NewClient({.transport = "tcp"});
  auto region = MakePatternRegion(*client, "net", kLayers, kEntry, 1200, 12, true);
  REQUIRE(region.ok());
  REQUIRE((*region)->transport_name() == "tcp-gather");
  auto batch = DeviceBatch::Create(*client, {.max_slots = 1, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 4096});
  REQUIRE(batch.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  REQUIRE((*batch)->Bind(0, *region, stream).ok());
  std::mt19937 rng(5);
  const int32_t k = 300;
  std::vector<int32_t> idx = MixedIndices(rng, 1, k, 1200);
  DeviceArray<int32_t> d_idx(idx.size()), d_slot(1);
  d_idx.Put(idx);
  d_slot.Put({0});
  DeviceArray<std::byte> d_dst(idx.size() * kEntry);
  REQUIRE((*batch)->Gather(stream, 0, d_idx.ptr, 1, k, d_slot.ptr, d_dst.ptr).ok());
  REQUIRE((*batch)->CheckErrors(stream).ok());
  REQUIRE(d_dst.Get() == Expected({*region}, 0, idx, k));
  cudaStreamDestroy(stream);
}

TEST_CASE("device gather: a lease that lapses is refused before launch, and one that lapses during the step is reported at its end", "[gpu][lease]") {
  DaemonFixture daemon({.pool_size = "64MiB", .lease_ms = 600});
  auto writer = daemon.NewClient();
  auto region = MakePatternRegion(*writer, "leased", kLayers, kEntry, 200, 3, true);
  REQUIRE(region.ok());
  auto reader_client = daemon.NewClient({.renew_leases = false});  // its lease lapses after ~480 ms
  auto reader = reader_client->Open("leased");
  REQUIRE(reader.ok());
  auto batch = DeviceBatch::Create(*reader_client, {.max_slots = 1, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 1024});
  REQUIRE(batch.ok());
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  REQUIRE((*batch)->Bind(0, *reader, stream).ok());
  DeviceArray<int32_t> d_idx(1), d_slot(1);
  d_idx.Put({7});
  d_slot.Put({0});
  DeviceArray<std::byte> d_dst(kEntry);
  REQUIRE((*batch)->Gather(stream, 0, d_idx.ptr, 1, 1, d_slot.ptr, d_dst.ptr).ok());
  // The step's end is reached only after the lease has lapsed: the check on the stream says so.
  REQUIRE(cudaLaunchHostFunc(stream, [](void*) { usleep(700 * 1000); }, nullptr) == cudaSuccess);
  REQUIRE((*batch)->EndStep(stream).ok());
  auto late = (*batch)->CheckErrors(stream);
  INFO(late.ToString());
  REQUIRE(late.code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(std::string(late.message()).find("lapsed") != std::string::npos);
  // And a gather launched now is refused before it reads anything.
  REQUIRE((*batch)->Gather(stream, 0, d_idx.ptr, 1, 1, d_slot.ptr, d_dst.ptr).code() ==
          absl::StatusCode::kFailedPrecondition);
  cudaStreamDestroy(stream);
}

int main(int argc, char** argv) {
  int devices = 0;
  cudaError_t rc = cudaGetDeviceCount(&devices);
  if (rc != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n", rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GPU: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  return Catch::Session().run(argc, argv);
}
