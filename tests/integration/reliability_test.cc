// Integrity and churn: sealed regions carry a checksum, and no interleaving of operations ever
// hands a reader another region's bytes.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {
bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("sealed regions carry a checksum that verify checks; a changed byte is DATA_LOSS", "[reliability][checksum]") {
  TempDir pool_dir;
  std::string pool_path = pool_dir.path() + "/pool";
  DaemonFixture daemon({.pool_size = "16MiB", .extra_args = {"--backing", "file:" + pool_path}});
  auto open_region = MakePatternRegion(daemon.client(), "unsealed", 2, 656, 100, 1, false);
  REQUIRE(open_region.ok());
  REQUIRE((*open_region)->Verify().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(daemon.Ctl("verify unsealed").exit_code == 1);

  auto region = MakePatternRegion(daemon.client(), "sealed", 3, 656, 1000, 2, true);
  REQUIRE(region.ok());
  REQUIRE((*region)->Verify().ok());
  auto other = daemon.NewClient()->Open("sealed");
  REQUIRE(other.ok());
  REQUIRE((*other)->Verify().ok());
  auto ok = daemon.Ctl("verify sealed --json");
  REQUIRE(ok.exit_code == 0);
  REQUIRE(Has(ok.out, "\"ok\":true"));
  REQUIRE(Has(ok.out, absl::StrFormat("\"bytes_checked\":%d", 3 * 1000 * 656)));
  REQUIRE_FALSE(Has(daemon.Ctl("region sealed --json").out, "\"checksum\":null"));

  // Flip one byte of layer 1, token 500 behind everyone's back, through the pool file.
  int fd = open(pool_path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  auto* pool = static_cast<std::byte*>(mmap(nullptr, 16 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  std::vector<std::byte> entry(656);
  std::vector<int32_t> idx = {500};
  REQUIRE((*region)->Fetch(1, idx, absl::MakeSpan(entry)).ok());
  std::byte* hit = nullptr;
  for (int64_t off = 0; off + 656 <= (16 << 20) && hit == nullptr; off += 64) {
    if (std::memcmp(pool + off, entry.data(), 656) == 0) hit = pool + off;
  }
  REQUIRE(hit != nullptr);
  hit[100] ^= std::byte{1};
  munmap(pool, 16 << 20);

  auto bad = daemon.Ctl("verify sealed");
  REQUIRE(bad.exit_code == 1);
  REQUIRE(Has(bad.err, "DATA_LOSS"));
  REQUIRE(Has(bad.err, "changed since it was sealed"));
  REQUIRE((*other)->Verify().code() == absl::StatusCode::kDataLoss);
}

TEST_CASE("churn: under create, write, fetch, delete and eviction a reader never sees another region's bytes", "[reliability][churn]") {
  // A small pool forces eviction; short leases exercise lapse; keys carry their generation, and
  // every entry encodes (generation, layer, token), so a misdirected read cannot pass.
  DaemonFixture daemon({.pool_size = "24MiB", .lease_ms = 600});
  const int32_t kLayers = 2, kEntry = 656;
  std::atomic<int64_t> next_generation{1}, creates{0}, deletes{0}, fetches{0}, entries{0}, wrong{0},
      unexpected{0}, refused{0};
  std::mutex live_mu;
  std::vector<std::string> live;  // keys that may exist
  auto key_of = [](int64_t gen) { return absl::StrFormat("churn-%d", gen); };
  auto gen_of = [](const std::string& key) { return std::stoll(key.substr(6)); };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  auto expected_error = [](absl::StatusCode code) {
    return code == absl::StatusCode::kNotFound || code == absl::StatusCode::kFailedPrecondition ||
           code == absl::StatusCode::kResourceExhausted || code == absl::StatusCode::kAlreadyExists;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      auto client = daemon.NewClient({.renew_leases = t % 3 != 2});  // some never renew
      std::mt19937_64 rng(t * 7919);
      std::vector<std::shared_ptr<Region>> held;
      while (std::chrono::steady_clock::now() < deadline) {
        int op = static_cast<int>(rng() % 10);
        if (op < 3) {  // create, fill, maybe seal
          int64_t gen = next_generation++;
          int64_t tokens = 200 + static_cast<int64_t>(rng() % 1500);
          auto r = MakePatternRegion(*client, key_of(gen), kLayers, kEntry, tokens, static_cast<uint64_t>(gen), rng() % 4 != 0);
          if (!r.ok()) {
            (expected_error(r.status().code()) ? refused : unexpected)++;
            if (!expected_error(r.status().code())) UNSCOPED_INFO("create: " << r.status().ToString());
            continue;
          }
          creates++;
          std::lock_guard lock(live_mu);
          live.push_back(key_of(gen));
          if (rng() % 2) held.push_back(*r);
        } else if (op < 8) {  // open (or reuse a held handle) and fetch
          std::shared_ptr<Region> region;
          if (!held.empty() && rng() % 2) {
            region = held[rng() % held.size()];
          } else {
            std::string key;
            {
              std::lock_guard lock(live_mu);
              if (live.empty()) continue;
              key = live[rng() % live.size()];
            }
            auto opened = client->Open(key);
            if (!opened.ok()) {
              (expected_error(opened.status().code()) ? refused : unexpected)++;
              continue;
            }
            region = *opened;
            if (rng() % 3 == 0) held.push_back(region);
          }
          int64_t gen = gen_of(region->key());
          int64_t committed = region->committed_tokens();
          if (committed == 0) continue;
          std::vector<int32_t> idx(64);
          for (auto& i : idx) i = static_cast<int32_t>(rng() % committed);
          std::vector<std::byte> dst(idx.size() * kEntry);
          int32_t layer = static_cast<int32_t>(rng() % kLayers);
          if (rng() % 5 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 50));
          auto st = region->Fetch(layer, idx, absl::MakeSpan(dst));
          if (!st.ok()) {
            (expected_error(st.code()) ? refused : unexpected)++;
            if (!expected_error(st.code())) UNSCOPED_INFO("fetch: " << st.ToString());
            continue;
          }
          fetches++;
          entries += static_cast<int64_t>(idx.size());
          wrong += CountWrong(static_cast<uint64_t>(gen), layer, idx, kEntry, dst);
        } else if (op < 9) {  // delete someone's region
          std::string key;
          {
            std::lock_guard lock(live_mu);
            if (live.empty()) continue;
            size_t i = rng() % live.size();
            key = live[i];
            live.erase(live.begin() + static_cast<long>(i));
          }
          auto st = client->Delete(key);
          if (st.ok()) deletes++;
          else (expected_error(st.code()) ? refused : unexpected)++;
        } else if (!held.empty()) {  // drop a handle
          held.erase(held.begin() + static_cast<long>(rng() % held.size()));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  auto stats = daemon.client().Stats();
  REQUIRE(stats.ok());
  INFO("creates " << creates << " deletes " << deletes << " fetches " << fetches << " entries " << entries
                  << " refused " << refused << " evictions " << stats->evictions);
  REQUIRE(wrong == 0);
  REQUIRE(unexpected == 0);
  REQUIRE(creates > 50);
  REQUIRE(fetches > 200);
  REQUIRE(deletes > 10);
  REQUIRE(stats->evictions > 0);
}
