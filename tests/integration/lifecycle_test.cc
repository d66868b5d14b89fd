// Regions growing, sealing, being evicted and deleted, and what lease holders see meanwhile.
#include <catch2/catch.hpp>

#include <chrono>
#include <numeric>
#include <set>
#include <thread>

#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {
void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
}  // namespace

TEST_CASE("a region grows during decode and a reader elsewhere sees the new tokens", "[lifecycle][decode]") {
  DaemonFixture daemon;
  const int32_t layers = 3, entry = 656;
  auto writer = MakePatternRegion(daemon.client(), "decode", layers, entry, 370, 5);
  REQUIRE(writer.ok());
  REQUIRE((*writer)->capacity_tokens() == 370);
  auto reader_client = daemon.NewClient();
  auto reader = reader_client->Open("decode");
  REQUIRE(reader.ok());

  // Append one token per step past several page boundaries (372 tokens per page).
  std::vector<std::byte> step(layers * entry);
  for (int64_t t = 370; t < 1200; ++t) {
    for (int32_t l = 0; l < layers; ++l) FillEntry(5, l, t, entry, step.data() + l * entry);
    REQUIRE((*writer)->Append(step, 1).ok());
  }
  REQUIRE((*writer)->committed_tokens() == 1200);
  REQUIRE((*writer)->capacity_tokens() == 1488);  // grown by whole pages: 4 x 372

  // Appending several tokens at once.
  std::vector<std::byte> chunk(layers * 10 * entry);
  for (int32_t l = 0; l < layers; ++l)
    for (int t = 0; t < 10; ++t) FillEntry(5, l, 1200 + t, entry, chunk.data() + (l * 10 + t) * entry);
  REQUIRE((*writer)->Append(chunk, 10).ok());

  // The reader's cached length is older, but a fetch of new tokens refreshes once.
  std::vector<int32_t> idx = {0, 371, 372, 1000, 1209, 1100};
  REQUIRE(VerifyAllLayers(**reader, 5, idx) == 0);
  REQUIRE((*reader)->committed_tokens() == 1210);
  std::vector<int32_t> past = {1210};
  std::vector<std::byte> dst(entry);
  REQUIRE((*reader)->Fetch(0, past, absl::MakeSpan(dst)).code() == absl::StatusCode::kOutOfRange);

  REQUIRE((*writer)->Seal().ok());
  REQUIRE((*writer)->Append(step, 1).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE((*writer)->Write(0, 0, absl::MakeSpan(step.data(), entry)).code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("eviction under memory pressure takes unleased sealed regions and never a leased one", "[lifecycle][eviction]") {
  DaemonFixture daemon({.pool_size = "32MiB"});  // 128 pages of 256 KiB
  Client& client = daemon.client();
  // Each region: 4 layers x 2000 tokens x 704 B = 4 layers x 6 pages = 24 pages (6 MiB).
  auto leased = MakePatternRegion(client, "leased", 4, 656, 2000, 77, true);
  REQUIRE(leased.ok());
  for (int i = 0; i < 3; ++i) {
    auto r = MakePatternRegion(client, "cold-" + std::to_string(i), 4, 656, 2000, 80 + i, true);
    REQUIRE(r.ok());
  }  // handles dropped: leases released
  auto unsealed = MakePatternRegion(client, "unsealed", 4, 656, 2000, 90, false);
  REQUIRE(unsealed.ok());
  unsealed->reset();
  // 5 x 24 = 120 of 128 pages used. Two more regions need 48 pages: evict at least two cold ones.
  auto x = MakePatternRegion(client, "new-x", 4, 656, 2000, 91, true);
  REQUIRE(x.ok());
  auto y = MakePatternRegion(client, "new-y", 4, 656, 2000, 92, true);
  REQUIRE(y.ok());
  auto stats = client.Stats();
  REQUIRE(stats->evictions >= 2);
  auto names = client.List();
  REQUIRE(names.ok());
  std::set<std::string> keys;
  for (const auto& r : *names) keys.insert(r.key);
  REQUIRE(keys.count("leased") == 1);
  REQUIRE(keys.count("unsealed") == 1);   // never sealed: not evictable
  REQUIRE(keys.count("cold-0") == 0);     // least recently used went first
  // The leased region's bytes are intact.
  std::vector<int32_t> idx(500);
  std::iota(idx.begin(), idx.end(), 1400);
  REQUIRE(VerifyAllLayers(**leased, 77, idx) == 0);

  // Free 8 pages + one evictable region of 24 cannot hold 36 pages: refused, nothing evicted.
  int64_t evictions_before = client.Stats()->evictions;
  auto big = client.Create({"big", 4, 656, 3000, 0});
  REQUIRE(big.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(std::string(big.status().message()).find("evictable") != std::string::npos);
  REQUIRE(client.Stats()->evictions == evictions_before);
  REQUIRE(client.Open("cold-2").ok());
  REQUIRE(VerifyAllLayers(**leased, 77, idx) == 0);
}

TEST_CASE("delete while another client holds a lease: old bytes stay readable until the lease ends, never reused", "[lifecycle][lease]") {
  DaemonFixture daemon({.pool_size = "16MiB", .lease_ms = 1500});
  auto owner = daemon.NewClient();
  auto reader_client = daemon.NewClient();
  auto region = MakePatternRegion(*owner, "victim", 2, 656, 2000, 21, true);
  REQUIRE(region.ok());
  auto reader = reader_client->Open("victim");
  REQUIRE(reader.ok());
  region->reset();
  REQUIRE(owner->Delete("victim").ok());
  REQUIRE(owner->Open("victim").status().code() == absl::StatusCode::kNotFound);

  // The pages are quarantined: a region that would need them cannot get them yet
  // (64 pages in the pool, 12 held for the reader, 54 asked for).
  REQUIRE(owner->Stats()->quarantined_bytes == 12 * 256 * 1024);
  // (A create waits for quarantined pages only within its deadline: here it is shorter than the
  // reader's lease, so the answer is at once.)
  auto hurried = daemon.NewClient({.rpc_timeout_ms = 300});
  auto early = hurried->Create({"filler", 2, 656, 10000, 0});
  REQUIRE(early.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(std::string(early.status().message()).find("quarantined") != std::string::npos);

  // Whatever the reader gets is the victim's bytes or an error.
  std::vector<int32_t> idx(300);
  std::iota(idx.begin(), idx.end(), 1000);
  std::vector<std::byte> dst(idx.size() * 656);
  auto status = (*reader)->Fetch(1, idx, absl::MakeSpan(dst));
  if (status.ok()) REQUIRE(CountWrong(21, 1, idx, 656, dst) == 0);
  else REQUIRE(status.code() == absl::StatusCode::kNotFound);

  // Within a renewal period the reader learns the region is gone.
  SleepMs(800);
  auto gone = (*reader)->Fetch(1, idx, absl::MakeSpan(dst));
  REQUIRE(gone.code() == absl::StatusCode::kNotFound);
  REQUIRE(std::string(gone.message()).find("deleted") != std::string::npos);
  // Once the lease period is over the memory is reused.
  SleepMs(1200);
  REQUIRE(owner->Stats()->quarantined_bytes == 0);
  auto filler = MakePatternRegion(*owner, "filler", 2, 656, 10000, 22, true);
  REQUIRE(filler.ok());
  REQUIRE((*reader)->Fetch(1, idx, absl::MakeSpan(dst)).code() == absl::StatusCode::kNotFound);
}

TEST_CASE("a client whose lease lapsed gets a clear error, and Refresh takes a new lease", "[lifecycle][lease]") {
  DaemonFixture daemon({.lease_ms = 400});
  auto lazy = daemon.NewClient({.renew_leases = false});
  auto region = MakePatternRegion(*lazy, "lapse", 1, 656, 100, 3, true);
  REQUIRE(region.ok());
  std::vector<int32_t> idx = {1, 2};
  std::vector<std::byte> dst(2 * 656);
  REQUIRE((*region)->Fetch(0, idx, absl::MakeSpan(dst)).ok());
  SleepMs(500);
  auto lapsed = (*region)->Fetch(0, idx, absl::MakeSpan(dst));
  REQUIRE(lapsed.code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(std::string(lapsed.message()).find("lapsed") != std::string::npos);
  REQUIRE((*region)->Refresh().ok());
  REQUIRE((*region)->Fetch(0, idx, absl::MakeSpan(dst)).ok());

  // A renewing client keeps its lease far past the lease period.
  auto renewing = daemon.NewClient();
  auto kept = renewing->Open("lapse");
  REQUIRE(kept.ok());
  SleepMs(1000);
  REQUIRE((*kept)->LeaseStatus().ok());
  REQUIRE((*kept)->Fetch(0, idx, absl::MakeSpan(dst)).ok());
}

TEST_CASE("a region idle past its TTL disappears", "[lifecycle][ttl]") {
  DaemonFixture daemon;
  {
    auto r = daemon.client().Create({"ephemeral", 1, 64, 10, 200});
    REQUIRE(r.ok());
  }
  REQUIRE(daemon.client().Open("ephemeral").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  REQUIRE(daemon.client().Open("ephemeral").status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("the control plane also answers on the Unix socket", "[lifecycle][unix]") {
  DaemonFixture daemon;
  ClientOptions options;
  options.server = daemon.unix_address();
  auto client = Client::Connect(options);
  REQUIRE(client.ok());
  auto region = MakePatternRegion(**client, "via-unix", 2, 656, 50, 8, true);
  REQUIRE(region.ok());
  std::vector<int32_t> idx = {0, 49};
  REQUIRE(VerifyAllLayers(**region, 8, idx) == 0);
}
