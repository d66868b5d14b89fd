// sparsekv-bench: top-k fetch benchmarks over the shm/CXL path, one JSON object per line.
//
// Every figure stands next to a limit or baseline measured in the same run, interleaved with
// it, and reported as medians: these machines are shared and noisy.
//
//   gather      the single-thread top-k gather (2048 x 656-byte entries, uniform random over a
//               128K-token region) vs. single-thread sequential memcpy of the same bytes from
//               the same pool: the plain per-entry memcpy loop, the tuned prefetching gather,
//               and the whole client path (Region::Fetch: validation, lease check, gather).
//   workloads   shared/WORKLOADS.md: ctx8k, ctx32k, ctx128k, indexer; "dsa" and "uniform" index
//               mixes; per-step latency p50/p99, GB/s, entries/s, bytes moved, ratio to
//               same-run memcpy, and (batch 1) the full-prefix baseline SAC compares against.
//
// Usage: sparsekv-bench [--server HOST:PORT] [--memory-budget SIZE] [--only gather|workloads]
//                       [--steps N] [--reps N] [--quick] [--backing B] [--fetch-threads N]
//                       [--workloads ctx8k,ctx32k,ctx128k,indexer]
// Without --server it starts its own sparsekvd on loopback with a pool of --memory-budget on
// backing B (default memfd; memfd-hugetlb needs vm.nr_hugepages reserved).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/baselines_redis.h"
#include "bench/bench_util.h"
#include "bench/workloads.h"
#include "client/fetch_planner.h"
#include "client/transports/shm_transport.h"
#include "common/size_parse.h"
#include "sparsekv/client.h"
#include "sparsekv/v1/control.grpc.pb.h"
#include "tests/support/daemon_fixture.h"

namespace sparsekv::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Labels {
  std::string workload, transport = "shm", indices;
  int batch = 0;
};

int g_label_threads = 1;  // client threads copying, for every line

std::string g_backing = "memfd";  // of the pool measured, for every line

void Emit(const Labels& l, const std::string& metric, double value, const std::string& unit,
          double ratio = -1, const std::string& ratio_to = "") {
  std::string line = absl::StrFormat("{\"workload\":\"%s\",\"transport\":\"%s\"", l.workload, l.transport);
  if (l.batch > 0) absl::StrAppendFormat(&line, ",\"batch\":%d", l.batch);
  if (!l.indices.empty()) absl::StrAppendFormat(&line, ",\"indices\":\"%s\"", l.indices);
  absl::StrAppendFormat(&line, ",\"backing\":\"%s\",\"threads\":%d", g_backing, g_label_threads);
  EmitMeasurement(std::move(line), metric, value, unit, ratio, ratio_to);
}

// Stamps the first 8 bytes of an entry with who it is; the rest is filler. Cheap to write at
// gigabytes per region and cheap to check on every fetched entry.
uint64_t Stamp(int64_t seq, int64_t layer, int64_t token) {
  return (static_cast<uint64_t>(seq) << 48) ^ (static_cast<uint64_t>(layer) << 32) ^ static_cast<uint64_t>(token) ^ 0x5ca1ab1e00000000ULL;
}

absl::StatusOr<std::shared_ptr<Region>> MakeRegion(Client& client, const std::string& key, int64_t seq,
                                                   int64_t tokens, int32_t layers, int32_t entry_bytes) {
  (void)client.Delete(key);
  auto region = client.Create({key, layers, entry_bytes, tokens, 0});
  if (!region.ok()) return region.status();
  std::vector<std::byte> layer_buf(static_cast<size_t>(tokens) * entry_bytes, std::byte{0x3c});
  for (int32_t l = 0; l < layers; ++l) {
    for (int64_t t = 0; t < tokens; ++t) {
      uint64_t s = Stamp(seq, l, t);
      std::memcpy(layer_buf.data() + t * entry_bytes, &s, std::min<int32_t>(8, entry_bytes));
    }
    if (auto st = (*region)->Write(l, 0, layer_buf); !st.ok()) return st;
  }
  if (auto st = (*region)->Commit(tokens); !st.ok()) return st;
  if (auto st = (*region)->Seal(); !st.ok()) return st;
  return region;
}

int64_t CountWrong(const std::byte* dst, int64_t seq, int32_t layer, const std::vector<int32_t>& idx, int32_t entry_bytes) {
  int64_t wrong = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    uint64_t want = Stamp(seq, layer, idx[i]), got = 0;
    std::memcpy(&got, dst + i * entry_bytes, std::min<int32_t>(8, entry_bytes));
    if (entry_bytes < 8) want &= (uint64_t{1} << (8 * entry_bytes)) - 1, got &= (uint64_t{1} << (8 * entry_bytes)) - 1;
    wrong += got != want;
  }
  return wrong;
}

// The raw view of one region: its mapped pool and page table, straight from the daemon, so the
// bench can time the bare gather loop next to the full client path.
struct RawRegion {
  std::unique_ptr<ShmTransport> pool;
  std::vector<std::vector<uint32_t>> pages;
  Geometry geometry;
  std::string key;
};

absl::StatusOr<RawRegion> OpenRaw(const std::string& server, const std::string& key) {
  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = v1::Control::NewStub(channel);
  grpc::ClientContext ctx;
  v1::OpenRegionRequest req;
  req.set_key(key);
  v1::OpenRegionResponse reply;
  if (auto s = stub->OpenRegion(&ctx, req, &reply); !s.ok()) return absl::UnavailableError(s.error_message());
  const auto& shm = reply.transport().shm();
  auto pool = ShmTransport::Map({shm.fd_socket_path(), shm.path(), shm.pool_bytes(), shm.pool_uuid(), shm.host_id()});
  if (!pool.ok()) return pool.status();
  RawRegion raw;
  raw.pool = *std::move(pool);
  raw.key = key;
  for (const auto& l : reply.layers()) raw.pages.emplace_back(l.pages().begin(), l.pages().end());
  const auto& g = reply.info().geometry();
  raw.geometry = {g.layers(), g.entry_bytes(), g.entry_stride_bytes(), g.tokens_per_page(), g.page_bytes()};
  return raw;
}

// The target: single-thread top-k gather vs. single-thread sequential memcpy.
int RunGather(Client& client, const std::string& server, int reps, bool quick) {
  const int64_t tokens = quick ? 16384 : 131072;
  const int32_t k = 2048, entry = 656;
  auto region = MakeRegion(client, "bench-gather", 0, tokens, 1, entry);
  if (!region.ok()) {
    std::fprintf(stderr, "gather: %s\n", region.status().ToString().c_str());
    return 1;
  }
  auto raw = OpenRaw(server, "bench-gather");
  if (!raw.ok()) {
    std::fprintf(stderr, "gather: %s\n", raw.status().ToString().c_str());
    return 1;
  }
  RegionLayout layout{&raw->key, raw->geometry, &raw->pages};
  const std::byte* base = raw->pool->base();
  // memcpy source: contiguous bytes inside the region's own pages (allocated in order).
  const int64_t first_page = raw->pages[0].front();
  const int64_t span_pages = static_cast<int64_t>(raw->pages[0].size());
  const size_t bytes = static_cast<size_t>(k) * entry;
  std::vector<std::byte> dst(bytes);
  std::vector<int32_t> idx(k);
  std::vector<int64_t> offsets(k);
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int64_t> any(0, tokens - 1);
  std::uniform_int_distribution<int64_t> copy_at(0, span_pages * raw->geometry.page_bytes - static_cast<int64_t>(bytes) - 1);
  std::map<std::string, std::vector<double>> secs;
  int64_t wrong = 0;
  for (int r = 0; r < reps; ++r) {
    auto draw = [&] {
      for (auto& t : idx) t = static_cast<int32_t>(any(rng));
      (void)ResolveTopK(layout, 0, idx, tokens, absl::MakeSpan(offsets));
    };
    // Interleave the four measurements so drifts in machine load hit them alike.
    int64_t at = first_page * raw->geometry.page_bytes + (copy_at(rng) & ~int64_t{63});
    auto t0 = Clock::now();
    std::memcpy(dst.data(), base + at, bytes);
    auto t1 = Clock::now();
    secs["memcpy_1t"].push_back(Seconds(t0, t1));
    draw();
    t0 = Clock::now();
    GatherEntries(base, offsets, entry, dst.data(), GatherPrefetch{0, 0});
    t1 = Clock::now();
    secs["plain_loop"].push_back(Seconds(t0, t1));
    draw();
    t0 = Clock::now();
    GatherEntries(base, offsets, entry, dst.data());
    t1 = Clock::now();
    secs["prefetch_gather"].push_back(Seconds(t0, t1));
    for (auto& t : idx) t = static_cast<int32_t>(any(rng));
    t0 = Clock::now();
    auto st = (*region)->Fetch(0, idx, absl::MakeSpan(dst));
    t1 = Clock::now();
    if (!st.ok()) {
      std::fprintf(stderr, "gather: %s\n", st.ToString().c_str());
      return 1;
    }
    wrong += CountWrong(dst.data(), 0, 0, idx, entry);
    secs["client_fetch"].push_back(Seconds(t0, t1));
  }
  Labels l{"gather_topk2048_uniform_128k", "shm", "uniform", 1};
  if (quick) l.workload = "gather_topk2048_uniform_quick";
  const double gb = bytes / 1e9;
  const double memcpy_gbps = gb / Percentile(secs["memcpy_1t"], 0.5);
  Emit(l, "memcpy_1t_gbps", memcpy_gbps, "GB/s");
  for (const char* name : {"plain_loop", "prefetch_gather", "client_fetch"}) {
    double gbps = gb / Percentile(secs[name], 0.5);
    Emit(l, absl::StrCat(name, "_gbps"), gbps, "GB/s", gbps / memcpy_gbps, "memcpy_1t");
  }
  Emit(l, "client_fetch_p99_us", Percentile(secs["client_fetch"], 0.99) * 1e6, "us");
  Emit(l, "wrong_entries", static_cast<double>(wrong), "entries");
  (void)client.Delete("bench-gather");
  return wrong == 0 ? 0 : 1;
}

std::string g_workloads;  // comma-separated names to run; empty: all
int g_fetch_threads = 1;
int g_data_connections = 4;
std::string g_transport = "auto";
bool g_redis = false;

// The Redis baseline for batch 1: the same entries of the same steps, each entry a key, fetched
// with one MGET per layer from a real redis-server on loopback. Only the keys the steps ask for
// are loaded (all of a 128K-token region would not fit this machine twice).
void RunRedisBaseline(const Workload& w, const std::string& mix, int steps, Region& region, double topk_p50_s) {
  auto redis = RedisBaseline::Start();
  Labels l{w.name, "redis-mget", mix, 1};
  if (!redis.ok()) {
    std::fprintf(stderr, "SKIPPED redis baseline: %s\n", std::string(redis.status().message()).c_str());
    return;
  }
  std::mt19937_64 rng(7);  // the same index sequence as the measured steps
  std::vector<std::vector<std::vector<int32_t>>> per_step(steps + 1, std::vector<std::vector<int32_t>>(w.layers));
  for (int step = 0; step <= steps; ++step) {
    for (int32_t layer = 0; layer < w.layers; ++layer) MakeIndices(mix, w.context_tokens, w.k, rng, &per_step[step][layer]);
  }
  for (int32_t layer = 0; layer < w.layers; ++layer) {
    std::vector<int32_t> needed;
    for (const auto& step : per_step) needed.insert(needed.end(), step[layer].begin(), step[layer].end());
    std::sort(needed.begin(), needed.end());
    needed.erase(std::unique(needed.begin(), needed.end()), needed.end());
    std::vector<std::byte> values(needed.size() * w.entry_bytes);
    if (!region.Fetch(layer, needed, absl::MakeSpan(values)).ok()) return;
    if (auto st = (*redis)->Load(layer, needed, values, w.entry_bytes); !st.ok()) {
      std::fprintf(stderr, "redis load: %s\n", st.ToString().c_str());
      return;
    }
  }
  std::vector<double> step_s;
  int64_t wrong = 0;
  std::vector<std::byte> dst(static_cast<size_t>(w.k) * w.entry_bytes);
  for (int step = 0; step <= steps; ++step) {
    auto t0 = Clock::now();
    for (int32_t layer = 0; layer < w.layers; ++layer) {
      auto got = (*redis)->MGet(layer, per_step[step][layer], w.entry_bytes, dst.data());
      if (!got.ok()) {
        std::fprintf(stderr, "redis MGET: %s\n", got.status().ToString().c_str());
        return;
      }
      wrong += CountWrong(dst.data(), 0, layer, per_step[step][layer], w.entry_bytes);
    }
    if (step > 0) step_s.push_back(Seconds(t0, Clock::now()));
  }
  const double p50 = Percentile(step_s, 0.5);
  Emit(l, "step_p50_ms", p50 * 1e3, "ms");
  Emit(l, "wrong_entries", static_cast<double>(wrong), "entries");
  Labels ours{w.name, region.transport_name(), mix, 1};
  Emit(ours, "topk_speedup_vs_redis_mget", p50 / topk_p50_s, "x", p50 / topk_p50_s, "redis_mget");
}

// Raw loopback TCP: the limit of the tcp-gather path, measured in the same run. A receiver
// thread drains `bytes` and answers one byte; the sender times write + answer.
class RawTcpLimit {
 public:
  RawTcpLimit() {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listener, 1);
    socklen_t len = sizeof(addr);
    getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
    sender_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    connect(sender_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    receiver_ = accept(listener, nullptr, nullptr);
    close(listener);
    int one = 1;
    setsockopt(sender_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~RawTcpLimit() {
    close(sender_);
    close(receiver_);
  }
  // Seconds to move `bytes` one way and get a one-byte answer back.
  double Measure(const std::vector<std::byte>& payload, size_t bytes) {
    std::thread drain([&] {
      std::vector<char> buf(1 << 20);
      size_t left = bytes;
      while (left > 0) {
        ssize_t r = recv(receiver_, buf.data(), std::min(buf.size(), left), 0);
        if (r <= 0) return;
        left -= static_cast<size_t>(r);
      }
      char ack = 1;
      (void)!send(receiver_, &ack, 1, 0);
    });
    auto t0 = Clock::now();
    size_t sent = 0;
    while (sent < bytes) {
      ssize_t w = send(sender_, payload.data() + (sent % payload.size()), std::min(payload.size() - sent % payload.size(), bytes - sent), 0);
      if (w <= 0) break;
      sent += static_cast<size_t>(w);
    }
    char ack;
    (void)!recv(sender_, &ack, 1, 0);
    auto t1 = Clock::now();
    drain.join();
    return Seconds(t0, t1);
  }

 private:
  int sender_ = -1, receiver_ = -1;
};

// Sequential memcpy on `threads` threads, each its own slice: the limit for the same thread count.
void ParallelMemcpy(std::byte* dst, const std::byte* src, size_t bytes, int threads) {
  if (threads <= 1) {
    std::memcpy(dst, src, bytes);
    return;
  }
  std::vector<std::thread> pool;
  size_t slice = bytes / threads;
  for (int t = 0; t < threads; ++t) {
    size_t len = t == threads - 1 ? bytes - slice * t : slice;
    pool.emplace_back([=] { std::memcpy(dst + slice * t, src + slice * t, len); });
  }
  for (auto& th : pool) th.join();
}

int RunWorkloads(Client& client, int64_t budget_bytes, int steps, bool quick) {
  int failures = 0;
  const int64_t memcpy_bytes = int64_t{64} << 20;
  for (const Workload& w : quick ? QuickWorkloads() : StandardWorkloads()) {
    if (!g_workloads.empty() && absl::StrCat(",", g_workloads, ",").find(absl::StrCat(",", w.name, ",")) == std::string::npos) continue;
    const int32_t stride = static_cast<int32_t>((w.entry_bytes + 63) / 64 * 64);
    const int64_t region_bytes = w.context_tokens * w.layers * stride;
    const int max_batch = *std::max_element(w.batches.begin(), w.batches.end());
    const int distinct = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_batch, budget_bytes * 9 / 10 / region_bytes)));
    std::vector<std::shared_ptr<Region>> regions;
    for (int s = 0; s < distinct; ++s) {
      auto r = MakeRegion(client, absl::StrFormat("bench-%s-%d", w.name, s), s, w.context_tokens, w.layers, w.entry_bytes);
      if (!r.ok()) {
        std::fprintf(stderr, "%s: region %d: %s\n", w.name.c_str(), s, r.status().ToString().c_str());
        return 1;
      }
      regions.push_back(*r);
    }
    const int32_t k = w.k > 0 ? w.k : static_cast<int32_t>(w.context_tokens);
    const size_t per_item = static_cast<size_t>(k) * w.entry_bytes;
    std::vector<std::byte> memcpy_src(memcpy_bytes, std::byte{1}), memcpy_dst(memcpy_bytes);
    const bool over_tcp = regions[0]->transport_name() != std::string("shm");
    std::unique_ptr<RawTcpLimit> raw_tcp = over_tcp ? std::make_unique<RawTcpLimit>() : nullptr;
    for (const std::string& mix : w.k > 0 ? std::vector<std::string>{"dsa", "uniform"} : std::vector<std::string>{"all"}) {
      for (int batch : w.batches) {
        Labels l{w.name, regions[0]->transport_name(), mix, batch};
        std::vector<std::byte> dst(per_item * batch * w.layers);
        std::vector<std::vector<int32_t>> idx(static_cast<size_t>(batch) * w.layers);
        std::vector<FetchItem> items;
        std::mt19937_64 rng(7);
        std::vector<double> step_s, memcpy_s, full_s;
        int64_t wrong = 0;
        for (int step = 0; step < steps + 1; ++step) {
          items.clear();
          for (int s = 0; s < batch; ++s) {
            for (int32_t layer = 0; layer < w.layers; ++layer) {
              auto& v = idx[static_cast<size_t>(s) * w.layers + layer];
              MakeIndices(mix, w.context_tokens, w.k, rng, &v);
              items.push_back({regions[s % distinct].get(), layer, v,
                               absl::MakeSpan(dst.data() + (static_cast<size_t>(s) * w.layers + layer) * per_item, per_item)});
            }
          }
          auto t0 = Clock::now();
          auto st = client.FetchBatch(items);
          auto t1 = Clock::now();
          if (!st.ok()) {
            std::fprintf(stderr, "%s: fetch: %s\n", w.name.c_str(), st.ToString().c_str());
            return 1;
          }
          double limit_s;
          if (over_tcp) {
            limit_s = raw_tcp->Measure(memcpy_src, static_cast<size_t>(per_item) * batch * w.layers) *
                      memcpy_bytes / (static_cast<double>(per_item) * batch * w.layers);
          } else {
            auto m0 = Clock::now();
            ParallelMemcpy(memcpy_dst.data(), memcpy_src.data(), memcpy_bytes, g_fetch_threads);
            limit_s = Seconds(m0, Clock::now());
          }
          if (step == 0) continue;  // warm-up
          step_s.push_back(Seconds(t0, t1));
          memcpy_s.push_back(limit_s);
          for (int s = 0; s < batch; ++s) {
            for (int32_t layer = 0; layer < w.layers; ++layer) {
              size_t i = static_cast<size_t>(s) * w.layers + layer;
              wrong += CountWrong(dst.data() + i * per_item, s % distinct, layer, idx[i], w.entry_bytes);
            }
          }
          if (batch == 1 && w.k > 0 && step <= 3) {
            // Full-prefix baseline: move every committed entry of every layer, then select.
            std::vector<std::byte> staging(static_cast<size_t>(w.context_tokens) * w.entry_bytes);
            std::vector<int32_t> all(w.context_tokens);
            for (int64_t t = 0; t < w.context_tokens; ++t) all[t] = static_cast<int32_t>(t);
            auto f0 = Clock::now();
            for (int32_t layer = 0; layer < w.layers; ++layer) {
              if (!regions[0]->Fetch(layer, all, absl::MakeSpan(staging)).ok()) return 1;
              const auto& v = idx[layer];
              for (size_t i = 0; i < v.size(); ++i) {
                std::memcpy(dst.data() + layer * per_item + i * w.entry_bytes, staging.data() + static_cast<size_t>(v[i]) * w.entry_bytes, w.entry_bytes);
              }
            }
            full_s.push_back(Seconds(f0, Clock::now()));
          }
        }
        const double bytes = static_cast<double>(per_item) * batch * w.layers;
        const double p50 = Percentile(step_s, 0.5);
        const double memcpy_gbps = memcpy_bytes / 1e9 / Percentile(memcpy_s, 0.5);
        const double gbps = bytes / 1e9 / p50;
        Emit(l, "step_p50_ms", p50 * 1e3, "ms");
        Emit(l, "step_p99_ms", Percentile(step_s, 0.99) * 1e3, "ms");
        const std::string limit = over_tcp ? std::string("raw_tcp_loopback_1conn") : absl::StrFormat("memcpy_%dt", g_fetch_threads);
        Emit(l, absl::StrCat(limit, "_gbps"), memcpy_gbps, "GB/s");
        Emit(l, "topk_gbps", gbps, "GB/s", gbps / memcpy_gbps, limit);
        Emit(l, "entries_per_s", static_cast<double>(k) * batch * w.layers / p50, "entries/s");
        Emit(l, "bytes_moved_per_step", bytes, "B");
        Emit(l, "distinct_regions", std::min(batch, distinct), "regions");
        Emit(l, "wrong_entries", static_cast<double>(wrong), "entries");
        if (!full_s.empty()) {
          double full = Percentile(full_s, 0.5);
          Emit(l, "full_prefix_step_ms", full * 1e3, "ms");
          Emit(l, "topk_speedup_vs_full_prefix", full / p50, "x", full / p50, "full_prefix");
        }
        failures += wrong != 0;
        if (g_redis && batch == 1 && w.k > 0) RunRedisBaseline(w, mix, steps, *regions[0], p50);
      }
    }
    for (int s = 0; s < distinct; ++s) {
      regions[s].reset();
      (void)client.Delete(absl::StrFormat("bench-%s-%d", w.name, s));
    }
  }
  return failures == 0 ? 0 : 1;
}

int Main(int argc, char** argv) {
  std::string server, only;
  int64_t budget = 0;
  int steps = 20, reps = 300;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--server") server = value();
    else if (a == "--memory-budget") {
      auto parsed = ParseSize(value());
      if (!parsed.ok()) { std::fprintf(stderr, "--memory-budget: %s\n", std::string(parsed.status().message()).c_str()); return 2; }
      budget = *parsed;
    } else if (a == "--only") only = value();
    else if (a == "--backing") g_backing = value();
    else if (a == "--workloads") g_workloads = value();
    else if (a == "--transport") g_transport = value();
    else if (a == "--redis") g_redis = true;
    else if (a == "--fetch-threads") g_fetch_threads = std::max(1, std::atoi(value().c_str()));
    else if (a == "--data-connections") g_data_connections = std::max(1, std::atoi(value().c_str()));
    else if (a == "--steps") steps = std::atoi(value().c_str());
    else if (a == "--reps") reps = std::atoi(value().c_str());
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: sparsekv-bench [--server HOST:PORT] [--memory-budget SIZE] [--only gather|workloads] [--steps N] [--reps N] [--quick] [--backing memfd|memfd-hugetlb|...] [--workloads ctx8k,ctx32k,ctx128k,indexer] [--fetch-threads N] [--transport auto|shm|tcp|fabric|verbs|network|LIST] [--data-connections N] [--redis]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (quick) {
    steps = std::min(steps, 4);
    reps = std::min(reps, 20);
  }
  if (budget == 0) {
    int64_t available = 0;
    std::ifstream meminfo("/proc/meminfo");
    std::string name, unit;
    int64_t kib;
    while (meminfo >> name >> kib >> unit) if (name == "MemAvailable:") available = kib * 1024;
    budget = quick ? (int64_t{256} << 20) : std::min<int64_t>(available / 3, int64_t{8} << 30);
  }
  std::unique_ptr<testing::DaemonFixture> daemon;
  if (server.empty()) {
    try {
      daemon = std::make_unique<testing::DaemonFixture>(testing::DaemonOptions{
          .pool_size = absl::StrCat(budget / (1 << 20), "MiB"), .lease_ms = 30000,
          .extra_args = {"--backing", g_backing}});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cannot start sparsekvd: %s\n", e.what());
      return 1;
    }
    server = daemon->address();
  }
  // --transport takes a comma-separated list ("network" = every network path: tcp,fabric);
  // the workloads run once per transport, each with its own client.
  std::string transports = g_transport == "network" ? std::string("tcp,fabric") : g_transport;
  int rc = 0;
  bool gathered = false;
  for (absl::string_view t : absl::StrSplit(transports, ',')) {
    ClientOptions options;
    options.server = server;
    options.rpc_timeout_ms = 60000;
    options.fetch_threads = g_fetch_threads;
    options.data_connections = g_data_connections;
    options.transport = std::string(t);
    auto client = Client::Connect(options);
    if (!client.ok()) {
      std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
      return 1;
    }
    if ((only.empty() || only == "gather") && !gathered) {
      rc |= RunGather(**client, server, reps, quick);
      gathered = true;
    }
    if (only.empty() || only == "workloads") {
      g_label_threads = g_fetch_threads;
      rc |= RunWorkloads(**client, budget, steps, quick);
    }
  }
  return rc;
}

}  // namespace
}  // namespace sparsekv::bench

int main(int argc, char** argv) { return sparsekv::bench::Main(argc, argv); }
