// sparsekv-gpu-bench: the GPU path against limits and baselines measured in the same run, as
// JSON lines (same fields as sparsekv-bench, plus "card").
//
//   limits/baselines  bulk pinned H2D of 1 GiB; a trivial flat zero-copy gather (host-resolved
//                     addresses, thread per 16 B); a HiSparse-style warp-per-entry kernel over a
//                     host-resolved list; one cudaMemcpyAsync per entry
//   cold gather       sparsekv::cuda::DeviceBatch::Gather (device-side resolution) at random
//                     working sets (256 MiB .. 16 GiB) and at the WORKLOADS.md shapes
//   residency         DSA-like traces whose step-to-step overlap follows ESS's per-layer
//                     measurement, through ResidencyCache: hit rate, miss bytes and microseconds
//                     per layer per step, next to the same trace cold
//
//   sparsekv-gpu-bench [--memory-budget 24GiB] [--working-sets 256MiB,1GiB,4GiB,16GiB] [--reps N] [--quick]
//                      [--only ws|shapes] [--backing memfd|memfd-hugetlb] [--contexts ctx32k,ctx128k]
//                      [--batches 1,8,32,64]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/region_view.h"
#include "client/transports/shm_transport.h"
#include "common/size_parse.h"
#include "sparsekv/cuda.h"
#include "tests/support/daemon_fixture.h"

namespace sparsekv::bench {
void LaunchFlatGather(const uint64_t* src, int64_t entries, int32_t entry_bytes, void* dst, cudaStream_t stream);
void LaunchWarpPerEntry(const uint64_t* src, int64_t entries, int32_t entry_bytes, void* dst, cudaStream_t stream);
void HoldStream(cudaStream_t stream, int us);
}  // namespace sparsekv::bench

using namespace sparsekv;
using sparsekv::bench::EmitMeasurement;
using sparsekv::bench::Median;
using sparsekv::cuda::DeviceBatch;
using sparsekv::cuda::ResidencyCache;

namespace {

constexpr int32_t kEntry = 656, kLayers = 61, kK = 2048;
std::string g_card;
std::string g_backing = "memfd";

#define CHECK_CUDA(call)                                                                      \
  do {                                                                                        \
    cudaError_t rc__ = (call);                                                                \
    if (rc__ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(rc__)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define CHECK_OK(expr)                                                                        \
  do {                                                                                        \
    auto st__ = (expr);                                                                       \
    if (!st__.ok()) {                                                                         \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, st__.ToString().c_str());      \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

void Emit(const std::string& workload, const std::string& metric, double value, const std::string& unit,
          double ratio = -1, const std::string& ratio_to = "") {
  EmitMeasurement(absl::StrFormat(R"({"bench":"gpu","card":"%s","backing":"%s","workload":"%s")", g_card, g_backing,
                                  workload),
                  metric, value, unit, ratio, ratio_to, /*value_digits=*/4, /*ratio_decimals=*/3);
}

bool Listed(const std::string& list, const std::string& item) {
  for (absl::string_view x : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    if (x == item) return true;
  }
  return false;
}

// Least-squares line y = a + b x through the points: {a, b}.
std::pair<double, double> FitLine(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  const double d = n * sxx - sx * sx;
  if (n < 2 || d == 0) return {0, 0};
  const double b = (n * sxy - sx * sy) / d;
  return {(sy - b * sx) / n, b};
}

// Device-side head start given to the host before each timed run (see TimeIt).
constexpr int kHostLeadUs = 300;

// Times `fn` (which enqueues on `stream`) `reps` times with events; median seconds.
template <typename Fn>
double TimeIt(cudaStream_t stream, int reps, Fn fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  fn(0);  // warm-up
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> s;
  for (int r = 0; r < reps; ++r) {
    // The device waits while the host queues the repetition: the host's enqueue time (reported
    // on its own where it matters) stays out of the device time, as in a pipelined decode loop.
    bench::HoldStream(stream, kHostLeadUs);
    CHECK_CUDA(cudaEventRecord(a, stream));
    fn(r);
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    s.push_back(ms / 1e3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return Median(s);
}

// A region of `layers` x `tokens` whose entry (l, t) starts with (l, t) as two int32 and is
// otherwise a constant: cheap to write, and each fetched entry can be checked.
std::shared_ptr<Region> MakeRegion(Client& client, const std::string& key, int64_t tokens, int32_t layers) {
  auto r = client.Create({key, layers, kEntry, tokens, 0});
  CHECK_OK(r.status());
  std::vector<std::byte> buf(static_cast<size_t>(std::min<int64_t>(tokens, 16384)) * kEntry, std::byte{0x5a});
  for (int32_t l = 0; l < layers; ++l) {
    for (int64_t first = 0; first < tokens; first += 16384) {
      const int64_t n = std::min<int64_t>(16384, tokens - first);
      for (int64_t t = 0; t < n; ++t) {
        int32_t head[2] = {l, static_cast<int32_t>(first + t)};
        std::memcpy(buf.data() + t * kEntry, head, sizeof(head));
      }
      CHECK_OK((*r)->Write(l, first, absl::MakeConstSpan(buf.data(), n * kEntry)));
    }
  }
  CHECK_OK((*r)->Commit(tokens));
  CHECK_OK((*r)->Seal());
  return *r;
}

int64_t CountWrong(const std::vector<std::byte>& got, const std::vector<int32_t>& idx, int32_t layer, size_t rows) {
  int64_t wrong = 0;
  for (size_t e = 0; e < rows * kK; ++e) {
    int32_t head[2];
    std::memcpy(head, got.data() + e * kEntry, sizeof(head));
    if (idx[e] >= 0 && (head[0] != layer || head[1] != idx[e])) ++wrong;
  }
  return wrong;
}

struct Flat {
  std::vector<uint64_t> host;
  uint64_t* device = nullptr;
};

// Device addresses of the entries, resolved on the host (the baselines' input).
void Resolve(const std::vector<std::shared_ptr<Region>>& rows, int32_t layer, const std::vector<int32_t>& idx, Flat* flat) {
  flat->host.resize(idx.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    RegionView v = ViewOf(*rows[r]);
    auto* shm = dynamic_cast<ShmTransport*>(v.transport.get());
    void* dev = nullptr;
    CHECK_CUDA(cudaHostGetDevicePointer(&dev, const_cast<std::byte*>(shm->mapping()), 0));
    const uint64_t base = reinterpret_cast<uint64_t>(dev) - shm->arena_offset();
    for (int32_t i = 0; i < kK; ++i) {
      const int32_t t = idx[r * kK + i];
      flat->host[r * kK + i] = base + static_cast<uint64_t>(v.geometry.EntryOffset(v.table->layers[layer], t));
    }
  }
  if (flat->device == nullptr) CHECK_CUDA(cudaMalloc(&flat->device, flat->host.size() * 8));
  CHECK_CUDA(cudaMemcpy(flat->device, flat->host.data(), flat->host.size() * 8, cudaMemcpyHostToDevice));
}

// ESS's measured step-to-step overlap of the top-k per layer (DeepSeek-V3.2).
double Overlap(int32_t layer) {
  if (layer == 0) return 0.0;
  if (layer <= 16 || layer >= 45) return 0.75;
  if (layer >= 18 && layer <= 43) return 0.4;
  return 0.55;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t budget = int64_t{24} << 30;
  bool budget_given = false;
  int32_t lookup_blocks = 0;  // ResidencyCacheOptions.blocks_per_row
  std::string sets = "256MiB,1GiB,4GiB,16GiB";
  int reps = 10;
  bool quick = false;
  std::string only;  // "", "ws" (working sets and baselines) or "shapes"
  std::string backing = "memfd";  // the pool's backing (memfd-hugetlb: 2 MiB pages, fewer IOMMU misses)
  std::string contexts = "ctx32k,ctx128k", batches = "1,8,32,64";  // the shapes run
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--memory-budget") {
      budget = *ParseSize(value());
      budget_given = true;
    }
    else if (a == "--working-sets") sets = value();
    else if (a == "--reps") reps = std::max(1, std::atoi(value().c_str()));
    else if (a == "--quick") quick = true;
    else if (a == "--only") only = value();
    else if (a == "--backing") backing = value();
    else if (a == "--lookup-blocks") lookup_blocks = std::atoi(value().c_str());
    else if (a == "--contexts") contexts = value();
    else if (a == "--batches") batches = value();
    else {
      std::fprintf(stderr,
                   "usage: sparsekv-gpu-bench [--memory-budget SIZE] [--working-sets LIST] [--reps N] [--quick]\n"
                   "                          [--only ws|shapes] [--backing memfd|memfd-hugetlb] [--lookup-blocks N]\n"
                   "                          [--contexts ctx32k,ctx128k] [--batches 1,8,32,64]\n");
      return 2;
    }
  }
  g_backing = backing;
  if (quick) {
    if (!budget_given) budget = std::min<int64_t>(budget, int64_t{1} << 30);
    sets = "256MiB";
    reps = 3;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  g_card = prop.name;
  testing::DaemonFixture daemon({.pool_size = absl::StrFormat("%dMiB", budget >> 20),
                                 .extra_args = {"--backing", backing}});
  ClientOptions options;
  options.server = daemon.address();
  options.transport = "shm";
  auto client = *Client::Connect(options);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // Limit: bulk pinned H2D of 1 GiB.
  const size_t bulk = quick ? (size_t{256} << 20) : (size_t{1} << 30);
  void *h_bulk = nullptr, *d_bulk = nullptr;
  CHECK_CUDA(cudaMallocHost(&h_bulk, bulk));
  CHECK_CUDA(cudaMalloc(&d_bulk, bulk));
  std::memset(h_bulk, 1, bulk);
  const double bulk_s = TimeIt(stream, 5, [&](int) { CHECK_CUDA(cudaMemcpyAsync(d_bulk, h_bulk, bulk, cudaMemcpyHostToDevice, stream)); });
  const double h2d = bulk / bulk_s / 1e9;
  Emit("limits", "bulk_pinned_h2d", h2d, "GB/s");
  cudaFreeHost(h_bulk);
  cudaFree(d_bulk);

  const int rows = 32;
  void* d_dst = nullptr;
  CHECK_CUDA(cudaMalloc(&d_dst, static_cast<size_t>(64) * kK * kEntry));  // up to batch 64
  int32_t *d_idx = nullptr, *d_slot = nullptr;
  CHECK_CUDA(cudaMalloc(&d_idx, static_cast<size_t>(64) * kK * 4));
  CHECK_CUDA(cudaMalloc(&d_slot, 64 * 4));
  std::mt19937 rng(7);

  // Cold gather at random working sets.
  for (absl::string_view s : absl::StrSplit(only == "shapes" ? std::string() : sets, ',', absl::SkipEmpty())) {
    const int64_t ws = *ParseSize(std::string(s));
    if (ws > budget * 9 / 10) {
      Emit(std::string(s), "skipped_over_budget", static_cast<double>(ws), "bytes");
      continue;
    }
    const int64_t per_token = int64_t{kLayers} * 704;
    int64_t left = ws;
    std::vector<std::shared_ptr<Region>> regions;
    while (left >= per_token * 1024) {
      const int64_t tokens = std::min<int64_t>(131072, left / per_token);
      regions.push_back(MakeRegion(*client, absl::StrFormat("ws-%s-%d", std::string(s), regions.size()), tokens, kLayers));
      left -= tokens * per_token;
    }
    auto batch = DeviceBatch::Create(*client, {.max_slots = 64, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = 131072});
    CHECK_OK(batch.status());
    for (size_t r = 0; r < regions.size(); ++r) CHECK_OK((*batch)->Bind(static_cast<int32_t>(r), regions[r], stream));
    std::vector<int32_t> slot(rows);
    std::vector<std::shared_ptr<Region>> row_region(rows);
    for (int r = 0; r < rows; ++r) {
      slot[r] = r % static_cast<int>(regions.size());
      row_region[r] = regions[slot[r]];
    }
    CHECK_CUDA(cudaMemcpy(d_slot, slot.data(), rows * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> idx(static_cast<size_t>(rows) * kK);
    for (int r = 0; r < rows; ++r) {
      const int64_t tokens = row_region[r]->committed_tokens();
      for (int i = 0; i < kK; ++i) idx[r * kK + i] = static_cast<int32_t>(rng() % tokens);
    }
    CHECK_CUDA(cudaMemcpy(d_idx, idx.data(), idx.size() * 4, cudaMemcpyHostToDevice));
    const double bytes = static_cast<double>(rows) * kK * kEntry;
    // Each rep a different layer: the working set is every layer of every region.
    const double ours = TimeIt(stream, reps, [&](int r) {
      CHECK_OK((*batch)->Gather(stream, r % kLayers, d_idx, rows, kK, d_slot, d_dst));
    });
    CHECK_OK((*batch)->CheckErrors(stream));
    std::vector<std::byte> got(static_cast<size_t>(rows) * kK * kEntry);
    CHECK_CUDA(cudaMemcpy(got.data(), d_dst, got.size(), cudaMemcpyDeviceToHost));
    const int64_t wrong = CountWrong(got, idx, (reps - 1) % kLayers, rows);
    Flat flat;
    Resolve(row_region, 3, idx, &flat);
    const double trivial = TimeIt(stream, reps, [&](int) { bench::LaunchFlatGather(flat.device, rows * kK, kEntry, d_dst, stream); });
    const double warp = TimeIt(stream, reps, [&](int) { bench::LaunchWarpPerEntry(flat.device, rows * kK, kEntry, d_dst, stream); });
    const std::string w = absl::StrFormat("random_ws_%s", std::string(s));
    Emit(w, "cold_gather", bytes / ours / 1e9, "GB/s", bytes / ours / 1e9 / h2d, "bulk_pinned_h2d");
    Emit(w, "trivial_flat_kernel", bytes / trivial / 1e9, "GB/s", (bytes / ours) / (bytes / trivial), "ours_over_this");
    Emit(w, "warp_per_entry_kernel", bytes / warp / 1e9, "GB/s", (bytes / ours) / (bytes / warp), "ours_over_this");
    Emit(w, "wrong_entries", static_cast<double>(wrong), "entries");
    cudaFree(flat.device);
    batch->reset();
    for (size_t r = 0; r < regions.size(); ++r) {
      const std::string key = regions[r]->key();
      regions[r].reset();
      row_region.clear();
      (void)client->Delete(key);
    }
  }

  // One cudaMemcpyAsync per entry (a decode server's naive path), 2048 entries.
  if (only != "shapes") {
    auto region = MakeRegion(*client, "per-entry", 8192, 2);
    auto batch = DeviceBatch::Create(*client, {.max_slots = 1, .layers = 2, .entry_bytes = kEntry, .max_tokens = 8192});
    CHECK_OK((*batch)->Bind(0, region, stream));  // registers the pool
    std::vector<int32_t> idx(kK);
    for (auto& t : idx) t = static_cast<int32_t>(rng() % 8192);
    Flat flat;
    Resolve({region}, 1, idx, &flat);
    const double t = TimeIt(stream, 3, [&](int) {
      for (int i = 0; i < kK; ++i) {
        CHECK_CUDA(cudaMemcpyAsync(static_cast<std::byte*>(d_dst) + static_cast<size_t>(i) * kEntry,
                                   reinterpret_cast<void*>(flat.host[i]), kEntry, cudaMemcpyDefault, stream));
      }
    });
    Emit("per_entry", "cudaMemcpyAsync_per_entry", static_cast<double>(kK) * kEntry / t / 1e9, "GB/s",
         static_cast<double>(kK) * kEntry / t / 1e9 / h2d, "bulk_pinned_h2d");
    // The same 2048 copies as one cudaMemcpyBatchAsync.
    std::vector<void*> dsts(kK);
    std::vector<const void*> srcs(kK);
    std::vector<size_t> sizes(kK, kEntry);
    for (int i = 0; i < kK; ++i) {
      dsts[i] = static_cast<std::byte*>(d_dst) + static_cast<size_t>(i) * kEntry;
      srcs[i] = reinterpret_cast<const void*>(flat.host[i]);
    }
    cudaMemcpyAttributes attrs{};
    attrs.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    const double tb = TimeIt(stream, 3, [&](int) {
      CHECK_CUDA(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), kK, &attrs, &attr_index, 1, stream));
    });
    Emit("per_entry", "cudaMemcpyBatchAsync", static_cast<double>(kK) * kEntry / tb / 1e9, "GB/s",
         static_cast<double>(kK) * kEntry / tb / 1e9 / h2d, "bulk_pinned_h2d");
    cudaFree(flat.device);
    batch->reset();
    region.reset();
    (void)client->Delete("per-entry");
  }

  // WORKLOADS.md shapes (61 layers, k = 2048) and the residency cache on ESS-like traces.
  struct Shape {
    const char* name;
    int64_t context;
  };
  for (Shape shape : {Shape{"ctx32k", 32768}, Shape{"ctx128k", 131072}}) {
    if ((quick && shape.context > 32768) || only == "ws" || !Listed(contexts, shape.name)) continue;
    const int64_t region_bytes = shape.context * kLayers * 704;
    const int distinct = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(64, budget * 8 / 10 / region_bytes)));
    std::vector<std::shared_ptr<Region>> regions;
    for (int r = 0; r < distinct; ++r) regions.push_back(MakeRegion(*client, absl::StrFormat("%s-%d", shape.name, r), shape.context, kLayers));
    for (int b : {1, 8, 32, 64}) {
      if ((quick && b > 8) || !Listed(batches, std::to_string(b))) continue;
      auto batch = DeviceBatch::Create(*client, {.max_slots = 64, .layers = kLayers, .entry_bytes = kEntry, .max_tokens = shape.context});
      // A slot per row (rows beyond the distinct regions read one of them again, from a slot of
      // their own: a slot's hot buffer serves one sequence).
      for (int r = 0; r < b; ++r) CHECK_OK((*batch)->Bind(r, regions[r % distinct], stream));
      std::vector<int32_t> slot(b);
      for (int r = 0; r < b; ++r) slot[r] = r;
      CHECK_CUDA(cudaMemcpy(d_slot, slot.data(), b * 4, cudaMemcpyHostToDevice));
      const std::string w = absl::StrFormat("%s_batch%d", shape.name, b);
      // A trace: per layer, each step keeps ESS's share of the previous step's top-k.
      const int steps = quick ? 4 : 12;
      std::vector<std::vector<int32_t>> trace(static_cast<size_t>(steps) * kLayers);
      std::vector<int32_t> prev;
      for (int32_t l = 0; l < kLayers; ++l) {
        for (int st = 0; st < steps; ++st) {
          std::vector<int32_t>& idx = trace[static_cast<size_t>(st) * kLayers + l];
          idx.resize(static_cast<size_t>(b) * kK);
          const std::vector<int32_t>* before = st > 0 ? &trace[static_cast<size_t>(st - 1) * kLayers + l] : nullptr;
          for (size_t e = 0; e < idx.size(); ++e) {
            if (before != nullptr && (rng() % 1000) < Overlap(l) * 1000) {
              idx[e] = (*before)[(e / kK) * kK + rng() % kK];
            } else {
              idx[e] = static_cast<int32_t>(rng() % shape.context);
            }
          }
        }
      }
      std::vector<int32_t*> d_trace(trace.size());
      for (size_t i = 0; i < trace.size(); ++i) {
        CHECK_CUDA(cudaMalloc(&d_trace[i], trace[i].size() * 4));
        CHECK_CUDA(cudaMemcpy(d_trace[i], trace[i].data(), trace[i].size() * 4, cudaMemcpyHostToDevice));
      }
      // Cold: all 61 layers of a step.
      const double step_bytes = static_cast<double>(b) * kK * kEntry * kLayers;
      const double cold = TimeIt(stream, steps - 1, [&](int st) {
        for (int32_t l = 0; l < kLayers; ++l) CHECK_OK((*batch)->Gather(stream, l, d_trace[static_cast<size_t>(st) * kLayers + l], b, kK, d_slot, d_dst));
      });
      CHECK_OK((*batch)->CheckErrors(stream));
      const double cold_rate = step_bytes / cold;
      Emit(w, "cold_gather_step", cold * 1e3, "ms", cold_rate / 1e9 / h2d, "bulk_pinned_h2d");
      Emit(w, "cold_gather", cold_rate / 1e9, "GB/s", cold_rate / 1e9 / h2d, "bulk_pinned_h2d");
      // Residency cache over the same trace (capacity 6144 per slot and layer).
      const int max_slots = std::max(distinct, b);
      const int64_t hot_bytes = static_cast<int64_t>(64) * kLayers * 6144 * kEntry;
      (void)max_slots;
      if (hot_bytes > static_cast<int64_t>(prop.totalGlobalMem) * 7 / 10) {
        Emit(w, "residency_skipped_hbm", static_cast<double>(hot_bytes), "bytes");
      } else {
        auto cache = ResidencyCache::Create(
            **batch, {.capacity = 6144, .max_k = kK, .max_batch = b, .blocks_per_row = lookup_blocks});
        CHECK_OK(cache.status());
        int32_t* d_out = nullptr;
        CHECK_CUDA(cudaMalloc(&d_out, static_cast<size_t>(b) * kK * 4));
        // Step 0 warms the cache (cold misses); steps 1.. are measured.
        for (int32_t l = 0; l < kLayers; ++l) CHECK_OK((*cache)->Lookup(stream, l, d_trace[l], b, kK, d_slot, d_out));
        CHECK_OK((*batch)->CheckErrors(stream));
        CHECK_OK((*cache)->Counters(stream, /*reset=*/true).status());
        // Events between the layers of a step, read after the step: the host's launches overlap
        // the device's work, as in a decode loop.
        std::vector<double> per_layer_us(kLayers, 0);
        double host_enqueue_us = 0;  // host time to enqueue one layer's lookup (launches, lease checks)
        std::vector<cudaEvent_t> marks(kLayers + 1);
        for (auto& e : marks) CHECK_CUDA(cudaEventCreate(&e));
        for (int st = 1; st < steps; ++st) {
          bench::HoldStream(stream, kHostLeadUs);  // the host queues the step ahead of the device
          CHECK_CUDA(cudaEventRecord(marks[0], stream));
          const auto host0 = std::chrono::steady_clock::now();
          for (int32_t l = 0; l < kLayers; ++l) {
            CHECK_OK((*cache)->Lookup(stream, l, d_trace[static_cast<size_t>(st) * kLayers + l], b, kK, d_slot, d_out));
            CHECK_CUDA(cudaEventRecord(marks[l + 1], stream));
          }
          host_enqueue_us += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host0).count() /
                             kLayers / (steps - 1);
          CHECK_CUDA(cudaEventSynchronize(marks[kLayers]));
          for (int32_t l = 0; l < kLayers; ++l) {
            float ms = 0;
            CHECK_CUDA(cudaEventElapsedTime(&ms, marks[l], marks[l + 1]));
            per_layer_us[l] += ms * 1e3 / (steps - 1);
          }
        }
        CHECK_OK((*batch)->CheckErrors(stream));
        auto counters = *(*cache)->Counters(stream);
        // The lookup's own cost: the last step again, now all hits (nothing to copy).
        double all_hits_us = 0;
        {
          const int st = steps - 1;
          bench::HoldStream(stream, kHostLeadUs);
          CHECK_CUDA(cudaEventRecord(marks[0], stream));
          for (int32_t l = 0; l < kLayers; ++l) {
            CHECK_OK((*cache)->Lookup(stream, l, d_trace[static_cast<size_t>(st) * kLayers + l], b, kK, d_slot, d_out));
          }
          CHECK_CUDA(cudaEventRecord(marks[1], stream));
          CHECK_CUDA(cudaEventSynchronize(marks[1]));
          float ms = 0;
          CHECK_CUDA(cudaEventElapsedTime(&ms, marks[0], marks[1]));
          all_hits_us = ms * 1e3 / kLayers;
        }
        // The same trace replayed from CUDA graphs, one per step captured once (as a decode server
        // runs its step: no host work per layer), on a fresh cache warmed with step 0.
        double graph_step_us = 0;
        {
          (*cache).reset();  // its hot buffers go before the second cache's come
          auto gcache = ResidencyCache::Create(
              **batch, {.capacity = 6144, .max_k = kK, .max_batch = b, .blocks_per_row = lookup_blocks});
          CHECK_OK(gcache.status());
          for (int32_t l = 0; l < kLayers; ++l) CHECK_OK((*gcache)->Lookup(stream, l, d_trace[l], b, kK, d_slot, d_out));
          CHECK_OK((*batch)->CheckErrors(stream));
          std::vector<cudaGraphExec_t> execs(steps, nullptr);
          for (int st = 1; st < steps; ++st) {
            cudaGraph_t graph;
            CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            for (int32_t l = 0; l < kLayers; ++l) {
              CHECK_OK((*gcache)->Lookup(stream, l, d_trace[static_cast<size_t>(st) * kLayers + l], b, kK, d_slot, d_out));
            }
            CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
            CHECK_CUDA(cudaGraphInstantiate(&execs[st], graph, 0));
            CHECK_CUDA(cudaGraphDestroy(graph));
          }
          for (int st = 1; st < steps; ++st) {
            bench::HoldStream(stream, kHostLeadUs);
            CHECK_CUDA(cudaEventRecord(marks[0], stream));
            CHECK_CUDA(cudaGraphLaunch(execs[st], stream));
            CHECK_CUDA(cudaEventRecord(marks[1], stream));
            CHECK_CUDA(cudaEventSynchronize(marks[1]));
            float ms = 0;
            CHECK_CUDA(cudaEventElapsedTime(&ms, marks[0], marks[1]));
            graph_step_us += ms * 1e3 / (steps - 1);
          }
          CHECK_OK((*batch)->CheckErrors(stream));
          for (auto e : execs) {
            if (e != nullptr) cudaGraphExecDestroy(e);
          }
        }
        for (auto& e : marks) cudaEventDestroy(e);
        uint64_t hits = 0, misses = 0;
        std::vector<double> over_target;  // each layer's time / its target
        std::vector<double> layer_miss_bytes;
        double targets_us = 0;  // the sum of the layers' targets
        for (int32_t l = 0; l < kLayers; ++l) {
          hits += counters[l].hits;
          misses += counters[l].misses;
          const double miss_bytes = static_cast<double>(counters[l].misses) * kEntry / (steps - 1);
          const double target_us = miss_bytes / cold_rate * 1e6 + 15;
          over_target.push_back(per_layer_us[l] / target_us);
          layer_miss_bytes.push_back(miss_bytes);
          targets_us += target_us;
          if (l == 0 || l == 8 || l == 30 || l == 50) {
            const double rate = static_cast<double>(counters[l].hits) / std::max<uint64_t>(1, counters[l].hits + counters[l].misses);
            Emit(absl::StrFormat("%s_layer%d", w, l), "residency_hit_rate", rate, "fraction");
            Emit(absl::StrFormat("%s_layer%d", w, l), "residency_us_per_step", per_layer_us[l], "us", per_layer_us[l] / target_us,
                 "miss_bytes_at_cold_rate_plus_15us");
          }
        }
        double total_us = 0;
        for (double u : per_layer_us) total_us += u;
        Emit(w, "residency_hit_rate", static_cast<double>(hits) / std::max<uint64_t>(1, hits + misses), "fraction");
        Emit(w, "residency_miss_bytes_per_step", static_cast<double>(misses) * kEntry / (steps - 1), "bytes");
        Emit(w, "residency_step", total_us / 1e3, "ms", total_us / 1e6 / cold, "cold_gather_step");
        Emit(w, "residency_worst_layer_vs_target", *std::max_element(over_target.begin(), over_target.end()), "ratio");
        // The worst of 61 noisy per-layer means is biased up; the median layer and the share of
        // layers within their target say how the rest fared.
        Emit(w, "residency_median_layer_vs_target", Median(over_target), "ratio");
        Emit(w, "residency_layers_within_target",
             static_cast<double>(std::count_if(over_target.begin(), over_target.end(), [](double r) { return r <= 1.0; })) /
                 static_cast<double>(over_target.size()),
             "fraction");
        // The target's two parts, from a line through the 61 layers' (miss bytes, time): the
        // intercept is a layer's fixed cost (against the 15 us it is allowed), the slope the
        // rate its misses move at (against the cold gather's).
        const auto [fixed_us, us_per_byte] = FitLine(layer_miss_bytes, per_layer_us);
        Emit(w, "residency_layer_fixed_us", fixed_us, "us", fixed_us / 15, "allowed_15us");
        Emit(w, "residency_miss_copy_rate", us_per_byte > 0 ? 1e-3 / us_per_byte : 0, "GB/s",
             us_per_byte > 0 ? 1e6 / us_per_byte / cold_rate : 0, "cold_gather");
        Emit(w, "residency_all_hits_us_per_layer", all_hits_us, "us", all_hits_us / (total_us / kLayers),
             "device_time_per_layer");
        Emit(w, "residency_host_enqueue_per_layer", host_enqueue_us, "us", host_enqueue_us / (total_us / kLayers),
             "device_time_per_layer");
        Emit(w, "residency_step_graph", graph_step_us / 1e3, "ms", graph_step_us / total_us, "residency_step");
        Emit(w, "residency_step_graph_vs_cold", graph_step_us / 1e3, "ms", graph_step_us / 1e6 / cold, "cold_gather_step");
        // The per-layer target over a whole step: the step from a graph (no event between its
        // layers, as a decode server runs it) against the sum of its layers' targets.
        Emit(w, "residency_step_graph_vs_targets", graph_step_us / 1e3, "ms", graph_step_us / targets_us,
             "sum_of_layer_targets");
        cudaFree(d_out);
      }
      for (auto* p : d_trace) cudaFree(p);
    }
    for (auto& r : regions) {
      const std::string key = r->key();
      r.reset();
      (void)client->Delete(key);
    }
  }
  return 0;
}
