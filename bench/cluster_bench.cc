// sparsekv-cluster-bench: the cluster on etcd, measured on loopback against real processes (an
// etcd-server and three sparsekvd members, plus one daemon outside any cluster as the
// single-node peer). JSON lines, every figure also as a ratio to a peer measured in the same run:
//
//  - top-k fetch throughput of one cluster client whose decode batch lives on 1, 2 and 3 nodes
//    (ratio to 1 node), and of a plain single-node client over the 1-node set (the cluster
//    client's own overhead), over shm and over tcp-gather;
//  - control-plane latency: create and open p50/p99 through the cluster (etcd directory) and
//    against the daemon outside any cluster;
//  - time from a node's SIGKILL to the first NOT_FOUND for one of its regions (ratio to the etcd
//    lease TTL).
//
//   sparsekv-cluster-bench [--quick] [--transport shm|tcp|both] [--steps N]
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "sparsekv/client.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/etcd_fixture.h"
#include "tests/support/pattern_regions.h"

namespace sparsekv {
namespace {

using Clock = std::chrono::steady_clock;
using testing::DaemonFixture;
using testing::DaemonOptions;
using testing::EtcdFixture;

struct Shape {
  int regions = 12, layers = 4, k = 2048, steps = 20, control_samples = 200;
  int64_t tokens = 4096;
  std::string pool = "384MiB";
};

using bench::Percentile;

void Emit(const std::string& part, const std::string& labels, const std::string& metric, double value,
          const std::string& unit, double ratio = -1, const std::string& ratio_to = "") {
  bench::EmitMeasurement(absl::StrFormat("{\"bench\":\"cluster\",\"part\":\"%s\"%s", part, labels), metric, value,
                         unit, ratio, ratio_to);
}

void Die(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "sparsekv-cluster-bench: %s: %s\n", what.c_str(), std::string(s.message()).c_str());
  std::exit(1);
}

std::unique_ptr<Client> Connect(ClientOptions options) {
  auto client = Client::Connect(options);
  if (!client.ok()) Die("connect", client.status());
  return *std::move(client);
}

// Steps of one decode batch (every region, every layer, k random indices) through `client`:
// bytes per second of the median step, and wrong entries seen.
std::pair<double, int64_t> FetchSteps(Client& client, const std::vector<std::string>& keys, const Shape& shape,
                                      uint32_t seed) {
  std::vector<std::shared_ptr<Region>> regions;
  for (const auto& key : keys) {
    auto r = client.Open(key);
    if (!r.ok()) Die("open " + key, r.status());
    regions.push_back(*r);
  }
  std::mt19937 rng(seed);
  const size_t items = keys.size() * shape.layers;
  std::vector<std::vector<int32_t>> indices(items, std::vector<int32_t>(shape.k));
  std::vector<std::vector<std::byte>> dst(items, std::vector<std::byte>(static_cast<size_t>(shape.k) * 656));
  std::vector<FetchItem> batch(items);
  std::vector<double> step_s;
  int64_t wrong = 0;
  for (int step = 0; step < shape.steps + 1; ++step) {
    for (size_t i = 0; i < items; ++i) {
      for (auto& t : indices[i]) t = static_cast<int32_t>(rng() % shape.tokens);
      batch[i] = {regions[i / shape.layers].get(), static_cast<int32_t>(i % shape.layers), indices[i],
                  absl::MakeSpan(dst[i])};
    }
    const auto start = Clock::now();
    if (auto s = client.FetchBatch(batch); !s.ok()) Die("fetch", s);
    const double took = std::chrono::duration<double>(Clock::now() - start).count();
    if (step > 0) step_s.push_back(took);  // the first step warms connections and mappings
    for (size_t i = 0; i < items; ++i) {
      const int salt = std::stoi(keys[i / shape.layers].substr(keys[i / shape.layers].rfind('/') + 1));
      wrong += testing::CountWrong(salt, static_cast<int32_t>(i % shape.layers), indices[i], 656, dst[i]);
    }
  }
  const double bytes = static_cast<double>(items) * shape.k * 656;
  return {bytes / Percentile(step_s, 0.5), wrong};
}

int Run(int argc, char** argv) {
  Shape shape;
  std::vector<std::string> transports = {"shm", "tcp"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      shape = Shape{6, 2, 256, 3, 20, 1024, "64MiB"};
    } else if (a == "--transport" && i + 1 < argc) {
      std::string t = argv[++i];
      transports = t == "both" ? std::vector<std::string>{"shm", "tcp"} : std::vector<std::string>{t};
    } else if (a == "--steps" && i + 1 < argc) {
      shape.steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: sparsekv-cluster-bench [--quick] [--transport shm|tcp|both] [--steps N]\n");
      return 2;
    }
  }
  if (!EtcdFixture::Installed()) {
    std::printf("SKIPPED: etcd-server is not installed (/usr/bin/etcd)\n");
    return 0;
  }
  constexpr int kTtlS = 3;
  EtcdFixture etcd;
  const std::string url = etcd.Url("bench");
  std::vector<std::unique_ptr<DaemonFixture>> nodes;
  for (int i = 0; i < 3; ++i) {
    DaemonOptions o;
    o.pool_size = shape.pool;
    o.extra_args = {"--cluster", url, "--cluster-node-id", absl::StrCat("n", i + 1), "--cluster-ttl-s",
                    std::to_string(kTtlS), "--cluster-refresh-ms", "300"};
    nodes.push_back(std::make_unique<DaemonFixture>(o));
  }
  DaemonOptions solo_options;
  solo_options.pool_size = shape.pool;
  DaemonFixture solo(solo_options);  // outside any cluster: the single-node peer
  ClientOptions cluster_options;
  cluster_options.cluster = url;
  auto admin = Connect(cluster_options);
  const auto registered = Clock::now() + std::chrono::seconds(30);
  while (true) {
    auto listed = admin->Nodes();
    if (listed.ok() && listed->size() == 3) break;
    if (Clock::now() > registered) Die("waiting for 3 nodes", listed.status());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Three sets of the same shape: on n1 only, on n1-n2, on n1-n3, spread evenly (region r of set N
  // is created through node r % N, which claims it in the directory like any cluster create), so
  // each figure measures a batch that really lives on N nodes.
  std::vector<std::unique_ptr<Client>> direct;
  for (auto& node : nodes) direct.push_back(node->NewClient());
  std::map<int, std::vector<std::string>> sets;
  int salt = 1;
  for (int n = 1; n <= 3; ++n) {
    for (int r = 0; r < shape.regions; ++r, ++salt) {
      const std::string key = absl::StrFormat("set%d/%d", n, salt);
      auto made = testing::MakePatternRegion(*direct[r % n], key, shape.layers, 656, shape.tokens, salt, true);
      if (!made.ok()) Die("create " + key, made.status());
      sets[n].push_back(key);
    }
  }
  for (int n = 1; n <= 3; ++n) {
    auto listed = admin->List(absl::StrCat("set", n, "/"));
    if (!listed.ok()) Die("list", listed.status());
    std::map<std::string, int> per;
    for (const auto& r : *listed) per[r.nodes.at(0)]++;
    Emit("fetch", absl::StrFormat(",\"nodes\":%d", n), "nodes_holding_the_batch", static_cast<double>(per.size()),
         "nodes");
  }

  for (const auto& transport : transports) {
    ClientOptions options = cluster_options;
    options.transport = transport;
    double one = 0;
    for (int n = 1; n <= 3; ++n) {
      auto client = Connect(options);
      auto [bps, wrong] = FetchSteps(*client, sets[n], shape, 7 * n);
      const std::string labels = absl::StrFormat(",\"transport\":\"%s\",\"nodes\":%d,\"batch\":%d,\"layers\":%d,\"k\":%d",
                                                 transport, n, shape.regions, shape.layers, shape.k);
      if (n == 1) one = bps;
      Emit("fetch", labels, "cluster_topk_gbps", bps / 1e9, "GB/s", bps / one, "cluster_1_node");
      Emit("fetch", labels, "wrong_entries", static_cast<double>(wrong), "entries");
    }
    // The same 1-node set through a plain client of n1: what the cluster layer costs a fetch.
    ClientOptions direct = options;
    direct.cluster.clear();
    direct.server = nodes[0]->address();
    auto plain = Connect(direct);
    auto [bps, wrong] = FetchSteps(*plain, sets[1], shape, 7);
    Emit("fetch", absl::StrFormat(",\"transport\":\"%s\",\"nodes\":1,\"client\":\"single-node\"", transport),
         "single_node_topk_gbps", bps / 1e9, "GB/s", one / bps, "cluster_1_node_over_single_node");
    Emit("fetch", absl::StrFormat(",\"transport\":\"%s\",\"client\":\"single-node\"", transport), "wrong_entries",
         static_cast<double>(wrong), "entries");
  }

  // Control plane: create and open latency with and without the etcd directory.
  auto latency = [&](Client& client, const std::string& tag) {
    std::vector<double> create_s, open_s;
    for (int i = 0; i < shape.control_samples; ++i) {
      const std::string key = absl::StrFormat("ctl-%s/%d", tag, i);
      auto start = Clock::now();
      auto made = client.Create({key, 2, 656, 64, 0});
      create_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      if (!made.ok()) Die("create " + key, made.status());
      made->reset();
      start = Clock::now();
      auto opened = client.Open(key);
      open_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      if (!opened.ok()) Die("open " + key, opened.status());
    }
    return std::make_pair(create_s, open_s);
  };
  ClientOptions solo_client_options;
  solo_client_options.server = solo.address();
  auto solo_client = Connect(solo_client_options);
  auto [solo_create, solo_open] = latency(*solo_client, "solo");
  auto cluster_client = Connect(cluster_options);
  auto [cl_create, cl_open] = latency(*cluster_client, "cluster");
  for (double p : {0.5, 0.99}) {
    const std::string q = p == 0.5 ? "p50" : "p99";
    Emit("control", ",\"with\":\"no cluster\"", "create_" + q + "_ms", Percentile(solo_create, p) * 1e3, "ms");
    Emit("control", ",\"with\":\"no cluster\"", "open_" + q + "_ms", Percentile(solo_open, p) * 1e3, "ms");
    Emit("control", ",\"with\":\"etcd\"", "create_" + q + "_ms", Percentile(cl_create, p) * 1e3, "ms",
         Percentile(cl_create, p) / Percentile(solo_create, p), "no_cluster");
    Emit("control", ",\"with\":\"etcd\"", "open_" + q + "_ms", Percentile(cl_open, p) * 1e3, "ms",
         Percentile(cl_open, p) / Percentile(solo_open, p), "no_cluster");
  }

  // A node's death: SIGKILL n3 and poll one of its regions until the cluster calls it lost.
  std::string on_n3;
  auto listed = admin->List("set3/");
  if (listed.ok()) {
    for (const auto& r : *listed) {
      if (r.nodes.at(0) == "n3") on_n3 = r.key;
    }
  }
  if (on_n3.empty()) Die("no region on n3", absl::NotFoundError("set3"));
  auto watcher = Connect(cluster_options);
  const auto killed = Clock::now();
  nodes[2]->Kill();
  double lost_s = -1;
  while (Clock::now() - killed < std::chrono::seconds(30)) {
    auto r = watcher->Open(on_n3);
    if (r.status().code() == absl::StatusCode::kNotFound) {
      lost_s = std::chrono::duration<double>(Clock::now() - killed).count();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Emit("node_loss", absl::StrFormat(",\"ttl_s\":%d", kTtlS), "death_to_not_found_s", lost_s, "s", lost_s / kTtlS,
       "etcd_lease_ttl");
  return lost_s < 0 ? 1 : 0;
}

}  // namespace
}  // namespace sparsekv

int main(int argc, char** argv) { return sparsekv::Run(argc, argv); }
