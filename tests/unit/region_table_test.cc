#include <catch2/catch.hpp>

#include "server/region_table.h"

using namespace sparsekv;
using Clock = RegionTable::Clock;

namespace {

struct Table {
  std::unique_ptr<Pool> pool;
  std::unique_ptr<RegionTable> table;
  explicit Table(int64_t pages, int64_t lease_ms = 10000, int64_t max_regions = 100) {
    DaemonConfig config;
    config.page_bytes = 64 * 1024;
    config.lease_ms = lease_ms;
    config.limits.max_regions = max_regions;
    pool = *Pool::Create({}, pages * config.page_bytes, false);
    table = std::make_unique<RegionTable>(pool.get(), config, *MakeEvictionPolicy("lru"), "/nonexistent");
  }
  // A region of `pages` pages (1 layer, 64-byte entries, 1024 tokens per page).
  absl::StatusOr<v1::OpenRegionResponse> Create(const std::string& key, int64_t pages) {
    v1::CreateRegionRequest r;
    r.set_key(key);
    r.set_layers(1);
    r.set_entry_bytes(64);
    r.set_capacity_tokens(pages * 1024);
    auto created = table->Create(r);
    if (created.ok()) writer[key] = created->lease().lease_id();
    return created;
  }
  std::map<std::string, uint64_t> writer;  // the creator's write lease, per key
  absl::Status Seal(const std::string& key) {
    v1::CommitRegionRequest r;
    r.set_key(key);
    r.set_seal(true);
    r.set_lease_id(writer[key]);
    return table->Commit(r).status();
  }
  void Release(uint64_t lease) {
    v1::ReleaseLeasesRequest r;
    r.add_lease_ids(lease);
    REQUIRE(table->Release(r).ok());
  }
  bool Exists(const std::string& key) {
    v1::GetRegionRequest r;
    r.set_key(key);
    return table->Get(r).ok();
  }
};

}  // namespace

TEST_CASE("eviction takes the least recently used sealed, unleased region", "[table][eviction]") {
  Table t(8);
  auto a = t.Create("a", 3);
  auto b = t.Create("b", 3);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(t.Seal("a").ok());
  REQUIRE(t.Seal("b").ok());
  t.Release(a->lease().lease_id());
  t.Release(b->lease().lease_id());
  // Touch "a" so "b" is the least recently used.
  v1::OpenRegionRequest open;
  open.set_key("a");
  auto reopened = t.table->Open(open);
  REQUIRE(reopened.ok());
  t.Release(reopened->lease().lease_id());
  auto c = t.Create("c", 4);
  REQUIRE(c.ok());
  REQUIRE(t.Exists("a"));
  REQUIRE_FALSE(t.Exists("b"));
  REQUIRE(t.table->Stats().evictions() == 1);
}

TEST_CASE("leased or unsealed regions are never evicted: the request fails and nothing moves", "[table][eviction]") {
  Table t(8);
  auto a = t.Create("a", 4);  // sealed but leased
  auto b = t.Create("b", 3);  // unsealed, lease released
  REQUIRE(t.Seal("a").ok());
  t.Release(b->lease().lease_id());
  auto c = t.Create("c", 4);
  REQUIRE(c.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(std::string(c.status().message()).find("region 'c' needs 4 pages") != std::string::npos);
  REQUIRE(t.Exists("a"));
  REQUIRE(t.Exists("b"));
  REQUIRE(t.table->Stats().evictions() == 0);
}

TEST_CASE("a deleted region's pages wait for its leases to expire", "[table][lease]") {
  Table t(4, /*lease_ms=*/200);
  auto a = t.Create("a", 4);
  REQUIRE(a.ok());
  v1::DeleteRegionRequest del;
  del.set_key("a");
  auto deleted = t.table->Delete(del);
  REQUIRE(deleted.ok());
  REQUIRE(deleted->memory_held_by_leases());
  REQUIRE(t.table->Stats().quarantined_bytes() == 4 * 64 * 1024);
  // The memory is not handed out while the lease could still read it.
  REQUIRE(t.Create("b", 1).status().code() == absl::StatusCode::kResourceExhausted);
  // Renewing the dead lease says why it is gone.
  v1::RenewLeasesRequest renew;
  renew.add_lease_ids(a->lease().lease_id());
  auto renewed = t.table->Renew(renew);
  REQUIRE_FALSE(renewed->leases(0).valid());
  REQUIRE(renewed->leases(0).reason().find("deleted") != std::string::npos);
  t.table->Reap(Clock::now() + std::chrono::milliseconds(250));
  REQUIRE(t.table->Stats().quarantined_bytes() == 0);
  REQUIRE(t.Create("b", 4).ok());
}

TEST_CASE("commit rules: grows only, within capacity, not after seal", "[table]") {
  Table t(4);
  REQUIRE(t.Create("a", 1).ok());
  v1::CommitRegionRequest c;
  c.set_key("a");
  c.set_lease_id(t.writer["a"]);
  c.set_committed_tokens(1025);
  REQUIRE(t.table->Commit(c).status().code() == absl::StatusCode::kOutOfRange);
  c.set_committed_tokens(100);
  REQUIRE(t.table->Commit(c).ok());
  c.set_committed_tokens(50);
  REQUIRE(t.table->Commit(c).status().code() == absl::StatusCode::kInvalidArgument);
  c.set_committed_tokens(100);
  c.set_seal(true);
  REQUIRE(t.table->Commit(c).ok());
  REQUIRE(t.table->Commit(c).ok());  // sealing again at the same length is a harmless retry
  c.set_committed_tokens(101);
  REQUIRE(t.table->Commit(c).status().code() == absl::StatusCode::kFailedPrecondition);
  v1::ExtendRegionRequest e;
  e.set_key("a");
  e.set_capacity_tokens(4096);
  REQUIRE(t.table->Extend(e).status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("extending grows every layer by whole pages and keeps existing pages", "[table]") {
  Table t(16);
  v1::CreateRegionRequest r;
  r.set_key("x");
  r.set_layers(3);
  r.set_entry_bytes(64);
  r.set_capacity_tokens(1000);
  auto created = t.table->Create(r);
  REQUIRE(created.ok());
  REQUIRE(created->layers_size() == 3);
  REQUIRE(created->layers(0).pages_size() == 1);
  v1::ExtendRegionRequest e;
  e.set_key("x");
  e.set_lease_id(created->lease().lease_id());
  e.set_capacity_tokens(3000);
  auto extended = t.table->Extend(e);
  REQUIRE(extended.ok());
  for (int l = 0; l < 3; ++l) {
    REQUIRE(extended->layers(l).pages_size() == 3);
    REQUIRE(extended->layers(l).pages(0) == created->layers(l).pages(0));
  }
  REQUIRE(t.table->Stats().used_bytes() == 9 * 64 * 1024);
  e.set_capacity_tokens(100000);  // would need 3 x 98 pages
  REQUIRE(t.table->Extend(e).status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(t.table->Stats().used_bytes() == 9 * 64 * 1024);  // nothing half-allocated
}

TEST_CASE("idle regions past their TTL are deleted by the reaper", "[table][ttl]") {
  Table t(4);
  v1::CreateRegionRequest r;
  r.set_key("short");
  r.set_layers(1);
  r.set_entry_bytes(64);
  r.set_capacity_tokens(10);
  r.set_ttl_ms(100);
  auto created = t.table->Create(r);
  REQUIRE(created.ok());
  t.Release(created->lease().lease_id());
  t.table->Reap(Clock::now() + std::chrono::milliseconds(50));
  REQUIRE(t.Exists("short"));
  t.table->Reap(Clock::now() + std::chrono::milliseconds(150));
  REQUIRE_FALSE(t.Exists("short"));
  REQUIRE(t.table->Stats().expired_regions() == 1);
}

TEST_CASE("the region count limit is RESOURCE_EXHAUSTED", "[table]") {
  Table t(8, 10000, /*max_regions=*/2);
  REQUIRE(t.Create("a", 1).ok());
  REQUIRE(t.Create("b", 1).ok());
  REQUIRE(t.Create("c", 1).status().code() == absl::StatusCode::kResourceExhausted);
}
