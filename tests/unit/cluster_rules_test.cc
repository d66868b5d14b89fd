// The cluster's rules that need no etcd: URL parsing, the footprint of a region, weighted
// rendezvous placement (stable, capacity-weighted, skipping full, draining and excluded nodes),
// and the JSON records.
#include <map>
#include <string>

#include <catch2/catch.hpp>

#include "absl/strings/match.h"
#include "common/cluster.h"

namespace sparsekv {
namespace {

v1::ClusterNode Node(const std::string& id, int64_t free_bytes, bool draining = false) {
  v1::ClusterNode n;
  n.set_id(id);
  n.set_free_bytes(free_bytes);
  n.set_pool_bytes(free_bytes);
  n.set_page_bytes(256 * 1024);
  n.set_draining(draining);
  return n;
}

TEST_CASE("cluster URLs: endpoints and name, and every malformed form refused with the reason", "[cluster]") {
  auto url = ParseClusterUrl("etcd://10.0.0.5:2379,10.0.0.6:2379/prod");
  REQUIRE(url.ok());
  CHECK(url->endpoints == std::vector<std::string>{"10.0.0.5:2379", "10.0.0.6:2379"});
  CHECK(url->name == "prod");
  CHECK(url->prefix() == "/sparsekv/prod/");
  CHECK(url->ToString() == "etcd://10.0.0.5:2379,10.0.0.6:2379/prod");
  for (const char* bad : {"http://a:1/x", "etcd://a:1", "etcd://a:1/", "etcd://a/x", "etcd://:1/x", "etcd://a:1x/x",
                          "etcd://a:70000/x", "etcd://127.0.0.1:0/x", "etcd://a:1/x/y", "etcd://a:1,,b:2/x"}) {
    INFO(bad);
    auto parsed = ParseClusterUrl(bad);
    CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(parsed.status().message(), "want etcd://HOST:PORT"));
  }
}

TEST_CASE("a region's footprint counts whole pages of 64-byte-padded entries per layer", "[cluster]") {
  // 656-byte entries pad to 704: 372 per 256 KiB page.
  CHECK(RegionShape{61, 656, 372}.Footprint(256 * 1024) == 61 * 256 * 1024);
  CHECK(RegionShape{61, 656, 373}.Footprint(256 * 1024) == 2 * 61 * 256 * 1024);
  CHECK(RegionShape{1, 656, 0}.Footprint(256 * 1024) == 256 * 1024);  // an empty region still takes a page
  CHECK(RegionShape{0, 656, 10}.Footprint(256 * 1024) == 0);
}

TEST_CASE("rendezvous placement: stable per key, weighted by free bytes, never on full, draining or excluded nodes",
          "[cluster]") {
  const std::vector<v1::ClusterNode> nodes = {Node("n1", 1 << 30), Node("n2", 1 << 30), Node("n3", int64_t{2} << 30)};
  const RegionShape shape{4, 656, 1000};
  std::map<std::string, int> first;
  for (int i = 0; i < 4000; ++i) {
    const std::string key = "req-" + std::to_string(i);
    auto ranked = RankNodes(key, nodes, shape);
    REQUIRE(ranked.size() == 3);
    CHECK(RankNodes(key, nodes, shape)[0].id() == ranked[0].id());  // the same answer every time
    first[ranked[0].id()]++;
  }
  // n3 has half the free bytes of the cluster: about half the keys (binomial sd ~32 of 4000).
  CHECK(first["n3"] > 1800);
  CHECK(first["n3"] < 2200);
  CHECK(first["n1"] > 850);
  CHECK(first["n2"] > 850);

  // Membership change moves only the keys of the node that left (rendezvous, not modulo).
  int moved = 0;
  const std::vector<v1::ClusterNode> without_n1 = {nodes[1], nodes[2]};
  for (int i = 0; i < 4000; ++i) {
    const std::string key = "req-" + std::to_string(i);
    const auto before = RankNodes(key, nodes, shape)[0].id();
    const auto after = RankNodes(key, without_n1, shape)[0].id();
    if (before != "n1") moved += before != after ? 1 : 0;
  }
  CHECK(moved == 0);

  const std::vector<v1::ClusterNode> mixed = {Node("full", 100 * 1024), Node("draining", 1 << 30, true),
                                              Node("ok", 1 << 30), Node("taken", 1 << 30)};
  auto ranked = RankNodes("k", mixed, shape, {"taken"});
  REQUIRE(ranked.size() == 1);
  CHECK(ranked[0].id() == "ok");
}

TEST_CASE("cluster records round-trip through JSON, and a record that is not one is DATA_LOSS naming the key", "[cluster]") {
  v1::ClusterRegionEntry entry;
  entry.set_key("tenant/req-1");
  entry.add_nodes("n1");
  entry.add_nodes("n3");
  entry.set_sealed(true);
  entry.set_checksum(0xfeedfacecafebeefull);
  entry.set_replicas(2);
  const std::string json = ToJson(entry);
  CHECK(absl::StrContains(json, "\"nodes\":[\"n1\",\"n3\"]"));
  v1::ClusterRegionEntry back;
  REQUIRE(FromJson(json, "/sparsekv/x/regions/tenant/req-1", &back).ok());
  CHECK(back.SerializeAsString() == entry.SerializeAsString());
  auto bad = FromJson("{not json", "/sparsekv/x/regions/k", &back);
  CHECK(bad.code() == absl::StatusCode::kDataLoss);
  CHECK(absl::StrContains(bad.message(), "/sparsekv/x/regions/k"));
}

}  // namespace
}  // namespace sparsekv
