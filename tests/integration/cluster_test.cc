// The cluster on etcd: a real etcd-server and three real sparsekvd processes on loopback, driven
// through the cluster client (ClientOptions::cluster), single-node clients and sparsekvctl.
#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <fstream>

#include <sys/stat.h>

#include <catch2/catch.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/etcd_fixture.h"
#include "tests/support/pattern_regions.h"

namespace sparsekv::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kTtlS = 3;

#define SKIP_WITHOUT_ETCD()                                                                   \
  if (!EtcdFixture::Installed()) {                                                            \
    WARN("SKIPPED: etcd-server is not installed (/usr/bin/etcd); deploy/setup.sh installs it"); \
    return;                                                                                   \
  }

struct TestCluster {
  EtcdFixture etcd;
  std::vector<std::unique_ptr<TempDir>> states;
  std::vector<std::unique_ptr<DaemonFixture>> nodes;

  explicit TestCluster(std::vector<std::string> pools = {"64MiB", "64MiB", "64MiB"}) {
    for (size_t i = 0; i < pools.size(); ++i) {
      states.push_back(std::make_unique<TempDir>());
      DaemonOptions o;
      o.pool_size = pools[i];
      o.extra_args = {"--cluster", url(), "--cluster-node-id", id(i), "--cluster-ttl-s", std::to_string(kTtlS),
                      "--cluster-refresh-ms", "300", "--state-dir", states[i]->path() + "/state",
                      // A file-backed pool survives a restart (a memfd pool only under systemd).
                      "--backing", "file:" + states[i]->path() + "/pool"};
      nodes.push_back(std::make_unique<DaemonFixture>(o));
    }
    REQUIRE(WaitNodes(pools.size()));
  }
  std::string url() const { return etcd.Url("test"); }
  static std::string id(size_t i) { return "n" + std::to_string(i + 1); }
  size_t index(const std::string& node) const { return static_cast<size_t>(std::stoi(node.substr(1)) - 1); }

  std::unique_ptr<Client> NewClient() {
    ClientOptions o;
    o.cluster = url();
    auto client = Client::Connect(o);
    REQUIRE(client.ok());
    return *std::move(client);
  }
  bool WaitNodes(size_t n, int ms = 30000) {
    auto client = NewClient();
    const auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    while (Clock::now() < deadline) {
      auto nodes = client->Nodes();
      if (nodes.ok() && nodes->size() == n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
};

std::map<std::string, std::vector<std::string>> NodesOf(Client& client, const std::string& prefix = "") {
  std::map<std::string, std::vector<std::string>> out;
  auto listed = client.List(prefix);
  REQUIRE(listed.ok());
  for (const auto& r : *listed) out[r.key] = r.nodes;
  return out;
}

std::vector<int32_t> SomeIndices(int64_t tokens, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> out(n);
  for (auto& i : out) i = static_cast<int32_t>(rng() % tokens);
  return out;
}

template <typename Pred>
bool WaitFor(int ms, Pred pred) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

TEST_CASE("cluster: placement spreads regions by free capacity, and one batch across all nodes is byte-exact",
          "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster({"64MiB", "64MiB", "128MiB"});
  auto client = cluster.NewClient();
  constexpr int kRegions = 96;
  constexpr int64_t kTokens = 200;  // one 256 KiB page per layer
  std::vector<std::shared_ptr<Region>> regions;
  for (int i = 0; i < kRegions; ++i) {
    auto r = MakePatternRegion(*client, "spread/" + std::to_string(i), 1, 656, kTokens, 100 + i, /*seal=*/true);
    REQUIRE(r.ok());
    regions.push_back(*r);
  }
  std::map<std::string, int> per_node;
  for (const auto& [key, nodes] : NodesOf(*client, "spread/")) {
    REQUIRE(nodes.size() == 1);
    per_node[nodes[0]]++;
  }
  INFO("n1 " << per_node["n1"] << ", n2 " << per_node["n2"] << ", n3 (twice the pool) " << per_node["n3"]);
  CHECK(per_node["n1"] + per_node["n2"] + per_node["n3"] == kRegions);
  CHECK(per_node["n1"] > 0);
  CHECK(per_node["n2"] > 0);
  CHECK(per_node["n3"] > per_node["n1"]);
  CHECK(per_node["n3"] > per_node["n2"]);

  // One batch over every region: items on all three nodes, fetched at once, byte-exact. Handles
  // opened fresh (by key, through the directory) as a decode server would.
  auto reader = cluster.NewClient();
  std::vector<std::shared_ptr<Region>> opened;
  for (int i = 0; i < kRegions; ++i) {
    auto r = reader->Open("spread/" + std::to_string(i));
    REQUIRE(r.ok());
    opened.push_back(*r);
  }
  std::vector<std::vector<int32_t>> indices(kRegions);
  std::vector<std::vector<std::byte>> dst(kRegions);
  std::vector<FetchItem> items;
  for (int i = 0; i < kRegions; ++i) {
    indices[i] = SomeIndices(kTokens, 64, i);
    dst[i].resize(indices[i].size() * 656);
    items.push_back({opened[i].get(), 0, indices[i], absl::MakeSpan(dst[i])});
  }
  REQUIRE(reader->FetchBatch(items).ok());
  int64_t wrong = 0;
  for (int i = 0; i < kRegions; ++i) wrong += CountWrong(100 + i, 0, indices[i], 656, dst[i]);
  CHECK(wrong == 0);
  CHECK(reader->TransportChoices().size() == 3);  // a connection per node, opened on first use

  // A bad item anywhere fails the whole batch with its index, before any node copies.
  std::vector<int32_t> bad = {0, static_cast<int32_t>(kTokens)};
  std::vector<std::byte> bad_dst(bad.size() * 656);
  items.push_back({opened[0].get(), 0, bad, absl::MakeSpan(bad_dst)});
  auto refused = reader->FetchBatch(items);
  CHECK(refused.code() == absl::StatusCode::kOutOfRange);
  CHECK(absl::StrContains(refused.message(), absl::StrCat("batch item ", kRegions)));

  auto stats = reader->Stats();
  REQUIRE(stats.ok());
  CHECK(stats->nodes == 3);
  CHECK(stats->regions == kRegions);
  CHECK(stats->pool_bytes == (int64_t{256} << 20));
}

TEST_CASE("cluster: creates of one key at once, on different nodes, give one region and ALREADY_EXISTS",
          "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster;
  // Single-node clients of each daemon: each daemon claims the key in etcd (one transaction) before
  // it allocates, so the race is decided by etcd, not by one daemon's table.
  std::vector<std::unique_ptr<Client>> direct;
  for (int i = 0; i < 6; ++i) direct.push_back(cluster.nodes[i % 3]->NewClient());
  auto cluster_client = cluster.NewClient();
  for (int round = 0; round < 8; ++round) {
    const std::string key = "race/" + std::to_string(round);
    std::atomic<int> ready{0}, ok{0}, exists{0}, other{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        ready++;
        while (ready.load() < 6) std::this_thread::yield();
        auto r = direct[t]->Create({key, 2, 656, 64, 0});
        if (r.ok()) ok++;
        else if (r.status().code() == absl::StatusCode::kAlreadyExists) exists++;
        else other++;
      });
    }
    for (auto& t : threads) t.join();
    CHECK(ok == 1);
    CHECK(exists == 5);
    CHECK(other == 0);
  }
  auto nodes = NodesOf(*cluster_client, "race/");
  CHECK(nodes.size() == 8);
  for (const auto& [key, held] : nodes) CHECK(held.size() == 1);
  // And through the cluster client: the loser is told where the key lives.
  auto first = cluster_client->Create({"race/cc", 2, 656, 64, 0});
  REQUIRE(first.ok());
  auto second = cluster.NewClient()->Create({"race/cc", 2, 656, 64, 0});
  CHECK(second.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(absl::StrContains(second.status().message(), "already exists in cluster 'test' (on node n"));
}

TEST_CASE("cluster: a killed node's regions are reported lost within the TTL, the rest stay byte-exact, "
          "new regions avoid it, and its restored regions are found again when it restarts",
          "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster;
  auto client = cluster.NewClient();
  std::vector<std::shared_ptr<Region>> regions;
  for (int i = 0; i < 12; ++i) {
    auto r = MakePatternRegion(*client, "loss/" + std::to_string(i), 2, 656, 300, 500 + i, /*seal=*/true);
    REQUIRE(r.ok());
    regions.push_back(*r);
  }
  auto placed = NodesOf(*client, "loss/");
  const std::string victim = placed["loss/0"][0];
  std::vector<std::string> on_victim, elsewhere;
  for (const auto& [key, nodes] : placed) (nodes[0] == victim ? on_victim : elsewhere).push_back(key);
  REQUIRE(!elsewhere.empty());

  // A handle opened on the victim before it dies: from then on it returns the right bytes (the
  // pool mapping outlives the daemon, and nothing else can write it) or an error, never others.
  auto early = cluster.NewClient();
  auto held = early->Open("loss/0");
  REQUIRE(held.ok());
  const auto killed = Clock::now();
  cluster.nodes[cluster.index(victim)]->Kill();
  {
    const auto idx = SomeIndices(300, 100, 1);
    std::vector<std::byte> dst(idx.size() * 656);
    for (int32_t layer = 0; layer < 2; ++layer) {
      auto s = (*held)->Fetch(layer, idx, absl::MakeSpan(dst));
      if (s.ok()) CHECK(CountWrong(500, layer, idx, 656, dst) == 0);
    }
  }
  absl::Status lost;
  auto reader = cluster.NewClient();
  REQUIRE(WaitFor(10000 + kTtlS * 1000, [&] {
    auto r = reader->Open("loss/0");
    lost = r.status();
    return lost.code() == absl::StatusCode::kNotFound;
  }));
  const double lost_after_s = std::chrono::duration<double>(Clock::now() - killed).count();
  INFO(lost.message());
  CHECK(absl::StrContains(lost.message(), "is lost"));
  CHECK(absl::StrContains(lost.message(), "node " + victim + " left the cluster: last heartbeat"));
  // The etcd lease TTL after the last keep-alive, etcd's expiry tick (0.5 s), the client's view
  // (at most 1 s old) and the poll.
  CHECK(lost_after_s < kTtlS + 2.5);

  for (const auto& key : elsewhere) {
    auto r = reader->Open(key);
    REQUIRE(r.ok());
    const int salt = 500 + std::stoi(key.substr(5));
    CHECK(VerifyAllLayers(**r, salt, SomeIndices(300, 100, salt)) == 0);
  }
  for (int i = 0; i < 20; ++i) {
    REQUIRE(client->Create({"after/" + std::to_string(i), 1, 656, 64, 0}).ok());
  }
  for (const auto& [key, nodes] : NodesOf(*client, "after/")) CHECK(nodes[0] != victim);

  // Back with its state dir: its sealed regions are restored and republished under their keys.
  cluster.nodes[cluster.index(victim)]->Restart();
  for (const auto& key : on_victim) {
    std::shared_ptr<Region> back;
    absl::Status last;
    const bool found = WaitFor(20000, [&] {
      auto r = reader->Open(key);
      if (r.ok()) back = *r;
      last = r.status();
      return r.ok();
    });
    INFO(key << ": " << last.message() << "\n" << cluster.nodes[cluster.index(victim)]->Log());
    REQUIRE(found);
    const int salt = 500 + std::stoi(key.substr(5));
    CHECK(VerifyAllLayers(*back, salt, SomeIndices(300, 100, salt)) == 0);
  }
}

TEST_CASE("cluster: with replicas = 2 a killed node loses no region", "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster;
  auto client = cluster.NewClient();
  for (int i = 0; i < 6; ++i) {
    RegionSpec spec{"shared/" + std::to_string(i), 3, 656, 500, 0};
    spec.replicas = 2;
    auto r = client->Create(spec);
    REQUIRE(r.ok());
    REQUIRE(WritePattern(**r, 900 + i, 0, 500).ok());
    REQUIRE((*r)->Commit(500).ok());
    REQUIRE((*r)->Seal().ok());
  }
  // The primaries copy their sealed regions node to node; the directory lists each copy.
  std::map<std::string, std::vector<std::string>> placed;
  REQUIRE(WaitFor(20000, [&] {
    placed = NodesOf(*client, "shared/");
    for (const auto& [key, nodes] : placed) {
      if (nodes.size() != 2) return false;
    }
    return placed.size() == 6;
  }));
  for (const auto& [key, nodes] : placed) CHECK(nodes[0] != nodes[1]);

  const std::string victim = placed["shared/0"][0];
  cluster.nodes[cluster.index(victim)]->Kill();
  // Wait until the cluster knows (so every open below must be served by a surviving copy).
  REQUIRE(cluster.WaitNodes(2));
  auto reader = cluster.NewClient();
  for (int i = 0; i < 6; ++i) {
    auto r = reader->Open("shared/" + std::to_string(i));
    INFO("shared/" << i << ": " << r.status().message());
    REQUIRE(r.ok());
    CHECK(VerifyAllLayers(**r, 900 + i, SomeIndices(500, 200, i)) == 0);
  }
  // Three copies cannot be had from two live nodes: said precisely.
  auto three = client->Replicate("shared/0", 3);
  CHECK(three.code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(three.message(), "2 of 3 copies live"));
}

TEST_CASE("cluster: etcd stopped and restarted under load: no wrong bytes, placements refused with a clear "
          "status meanwhile, recovery after",
          "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster;
  auto client = cluster.NewClient();
  std::vector<std::shared_ptr<Region>> regions;
  for (int i = 0; i < 6; ++i) {
    auto r = MakePatternRegion(*client, "load/" + std::to_string(i), 2, 656, 400, 300 + i, /*seal=*/true);
    REQUIRE(r.ok());
  }
  auto reader = cluster.NewClient();
  for (int i = 0; i < 6; ++i) {
    auto r = reader->Open("load/" + std::to_string(i));
    REQUIRE(r.ok());
    regions.push_back(*r);
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> batches{0}, wrong{0}, errors{0};
  std::string first_error;
  std::thread load([&] {
    uint32_t seed = 0;
    while (!stop.load()) {
      std::vector<std::vector<int32_t>> idx(6);
      std::vector<std::vector<std::byte>> dst(6);
      std::vector<FetchItem> items;
      std::vector<int32_t> layer(6);
      for (int i = 0; i < 6; ++i) {
        idx[i] = SomeIndices(400, 128, ++seed);
        dst[i].resize(idx[i].size() * 656);
        layer[i] = static_cast<int32_t>(seed % 2);
        items.push_back({regions[i].get(), layer[i], idx[i], absl::MakeSpan(dst[i])});
      }
      auto s = reader->FetchBatch(items);
      if (!s.ok()) {
        if (errors++ == 0) first_error = std::string(s.message());
        continue;
      }
      for (int i = 0; i < 6; ++i) wrong += CountWrong(300 + i, layer[i], idx[i], 656, dst[i]);
      batches++;
    }
  });

  cluster.etcd.Stop();
  // Placements are refused, by the cluster client and by a node asked directly, naming etcd.
  auto placed = client->Create({"load/new", 1, 656, 64, 0});
  CHECK(placed.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(placed.status().message(), "etcd"));
  auto direct = cluster.nodes[0]->NewClient();
  auto refused = direct->Create({"load/direct", 1, 656, 64, 0});
  CHECK(refused.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(refused.status().message(), "cannot reach etcd"));
  CHECK(absl::StrContains(refused.status().message(), "regions already on this node keep serving"));
  // A region this client has looked up before is still opened from what it last saw.
  CHECK(reader->Open("load/3").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const int64_t during = batches.load();

  cluster.etcd.Start();
  REQUIRE(WaitFor(30000, [&] { return client->Create({"load/after", 1, 656, 64, 0}).ok(); }));
  REQUIRE(cluster.WaitNodes(3));
  stop = true;
  load.join();
  INFO(first_error);
  CHECK(during > 0);
  CHECK(errors == 0);
  CHECK(wrong == 0);
  // Every node re-registered, and the directory still has every region.
  CHECK(NodesOf(*client, "load/").size() == 7);
}

TEST_CASE("cluster: sparsekvctl --cluster shows nodes and regions, and drain --move empties a node", "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster;
  auto client = cluster.NewClient();
  for (int i = 0; i < 9; ++i) {
    REQUIRE(MakePatternRegion(*client, "move/" + std::to_string(i), 2, 656, 300, 700 + i, true).ok());
  }
  auto unsealed = client->Create({"move/open", 1, 656, 64, 0});
  REQUIRE(unsealed.ok());
  const std::string ctl = SparsekvctlPath() + " --cluster " + cluster.url() + " ";
  auto nodes = RunCommand(ctl + "nodes");
  CHECK(nodes.exit_code == 0);
  CHECK(absl::StrContains(nodes.out, "n1"));
  CHECK(absl::StrContains(nodes.out, "serving"));
  auto status = RunCommand(ctl + "status");
  CHECK(status.exit_code == 0);
  CHECK(absl::StrContains(status.out, "3 live (0 draining), 0 lost"));
  CHECK(absl::StrContains(status.out, "10 in the directory"));
  auto json = RunCommand(ctl + "--json regions move/");
  CHECK(json.exit_code == 0);
  CHECK(absl::StrContains(json.out, "\"key\":\"move/3\""));

  auto placed = NodesOf(*client, "move/");
  const std::string busy = placed["move/0"][0];
  auto drained = RunCommand(ctl + "drain " + busy + " --move");
  INFO(drained.out << drained.err);
  CHECK(drained.exit_code == 0);
  CHECK(absl::StrContains(drained.out, "regions moved"));
  for (const auto& [key, held] : NodesOf(*client, "move/")) {
    if (key == "move/open") continue;
    REQUIRE(held.size() == 1);
    CHECK(held[0] != busy);
  }
  auto reader = cluster.NewClient();
  for (int i = 0; i < 9; ++i) {
    auto r = reader->Open("move/" + std::to_string(i));
    REQUIRE(r.ok());
    CHECK(VerifyAllLayers(**r, 700 + i, SomeIndices(300, 100, i)) == 0);
  }
  REQUIRE(WaitFor(5000, [&] {
    auto listed = client->Nodes();
    for (const auto& n : *listed) {
      if (n.id == busy) return n.draining;
    }
    return false;
  }));
  for (int i = 0; i < 12; ++i) REQUIRE(client->Create({"drained/" + std::to_string(i), 1, 656, 64, 0}).ok());
  for (const auto& [key, held] : NodesOf(*client, "drained/")) CHECK(held[0] != busy);
  auto gone = RunCommand(ctl + "drain n9");
  CHECK(gone.exit_code == 1);
  CHECK(absl::StrContains(gone.err, "node n9 is not in the cluster"));
}

TEST_CASE("cluster: a client names a region that never existed and a malformed cluster URL precisely", "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TestCluster cluster({"64MiB"});
  auto client = cluster.NewClient();
  auto none = client->Open("never");
  CHECK(none.status().code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(none.status().message(), "no region 'never' in cluster 'test'"));
  ClientOptions bad;
  bad.cluster = "etcd://127.0.0.1/x";
  CHECK(Client::Connect(bad).status().code() == absl::StatusCode::kInvalidArgument);
  bad.cluster = "etcd://127.0.0.1:1/x";  // nothing listens there
  CHECK(Client::Connect(bad).status().code() == absl::StatusCode::kUnavailable);
  bad.cluster = "etcd://127.0.0.1:0/x";  // a configuration error, not an outage
  CHECK(Client::Connect(bad).status().code() == absl::StatusCode::kInvalidArgument);
  // A cluster name no node registered under: the create says so, not "exhausted".
  ClientOptions typo;
  typo.cluster = cluster.etcd.Url("tset");
  auto lonely = Client::Connect(typo);
  REQUIRE(lonely.ok());
  auto placed = (*lonely)->Create({"nowhere", 1, 656, 64, 0});
  CHECK(placed.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(placed.status().message(), "no node is registered in cluster 'tset'"));
  // A single-node client is told it is not a cluster client.
  auto direct = cluster.nodes[0]->NewClient();
  CHECK(direct->Nodes().status().code() == absl::StatusCode::kFailedPrecondition);
  // Eviction on a node removes the directory entry too.
  REQUIRE(MakePatternRegion(*client, "evicted", 1, 656, 64, 1, /*seal=*/true).ok());
  REQUIRE(client->Open("evicted").ok());
  REQUIRE(WaitFor(5000, [&] {  // the reader's lease from the Open above must lapse or be released first
    auto evicted = cluster.nodes[0]->Ctl("evict --bytes 256KiB");
    return evicted.exit_code == 0;
  }));
  CHECK(WaitFor(5000, [&] {
    auto r = client->Open("evicted");
    return r.status().code() == absl::StatusCode::kNotFound &&
           absl::StrContains(r.status().message(), "no region 'evicted' in cluster 'test'");
  }));
  // Deleting through the cluster removes the directory entry with the region.
  REQUIRE(client->Create({"gone", 1, 656, 64, 0}).ok());
  REQUIRE(client->Delete("gone").ok());
  CHECK(client->Open("gone").status().code() == absl::StatusCode::kNotFound);
  CHECK(client->Create({"gone", 1, 656, 64, 0}).ok());  // and the key can be used again
}

}  // namespace
}  // namespace sparsekv::testing

namespace sparsekv::testing {
namespace {

TEST_CASE("cluster with tenants: each tenant's keys are its own across the cluster, and replicas copy under the admin "
          "token",
          "[cluster]") {
  SKIP_WITHOUT_ETCD();
  TempDir dir;
  const std::string tenants = dir.path() + "/tenants.toml";
  std::ofstream(tenants) << "[admin]\ntokens = [\"cluster-admin-0123456789abcdef\"]\n\n"
                         << "[tenants.team-a]\ntokens = [\"team-a-secret-0123456789abcd\"]\n\n"
                         << "[tenants.team-b]\ntokens = [\"team-b-secret-0123456789abcd\"]\n";
  chmod(tenants.c_str(), 0600);
  const std::string token_file = dir.path() + "/cluster.token";
  std::ofstream(token_file) << "cluster-admin-0123456789abcdef\n";
  EtcdFixture etcd;
  std::vector<std::unique_ptr<DaemonFixture>> nodes;
  for (int i = 0; i < 2; ++i) {
    DaemonOptions o;
    o.extra_args = {"--cluster", etcd.Url("tenants"), "--cluster-node-id", "t" + std::to_string(i),
                    "--cluster-ttl-s", "3", "--cluster-refresh-ms", "300", "--tenants-file", tenants,
                    "--cluster-token-file", token_file};
    nodes.push_back(std::make_unique<DaemonFixture>(o));
  }
  auto as = [&](const std::string& token) {
    ClientOptions o;
    o.cluster = etcd.Url("tenants");
    o.token = token;
    auto c = Client::Connect(o);
    REQUIRE(c.ok());
    return *std::move(c);
  };
  auto a = as("team-a-secret-0123456789abcd");
  auto b = as("team-b-secret-0123456789abcd");
  REQUIRE(WaitFor(20000, [&] {
    auto n = a->Nodes();
    return n.ok() && n->size() == 2;
  }));
  RegionSpec spec{"shared-prefix", 2, 656, 200, 0};
  spec.replicas = 2;
  auto region_a = a->Create(spec);
  REQUIRE(region_a.ok());
  REQUIRE(WritePattern(**region_a, 41, 0, 200).ok());
  REQUIRE((*region_a)->Commit(200).ok());
  REQUIRE((*region_a)->Seal().ok());
  // team-b does not see team-a's key, and has its own region under the same name.
  CHECK(b->Open("shared-prefix").status().code() == absl::StatusCode::kNotFound);
  auto region_b = MakePatternRegion(*b, "shared-prefix", 2, 656, 200, 42, true);
  REQUIRE(region_b.ok());
  std::map<std::string, std::vector<std::string>> listed;
  REQUIRE(WaitFor(20000, [&] {
    listed = NodesOf(*a, "");
    return listed.size() == 1 && listed["shared-prefix"].size() == 2;  // copied by the node, as the admin
  }));
  auto reader_a = as("team-a-secret-0123456789abcd");
  auto ra = reader_a->Open("shared-prefix");
  REQUIRE(ra.ok());
  CHECK(VerifyAllLayers(**ra, 41, SomeIndices(200, 50, 3)) == 0);
  auto rb = b->Open("shared-prefix");
  REQUIRE(rb.ok());
  CHECK(VerifyAllLayers(**rb, 42, SomeIndices(200, 50, 4)) == 0);
  auto dup = as("team-a-secret-0123456789abcd")->Create({"shared-prefix", 2, 656, 200, 0});
  CHECK(dup.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(absl::StrContains(dup.status().message(), "region 'shared-prefix' already exists"));
}

}  // namespace
}  // namespace sparsekv::testing
