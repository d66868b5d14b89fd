// Byte-exact fetches through the real daemon and the shm transport.
#include <catch2/catch.hpp>

#include <atomic>
#include <numeric>
#include <random>
#include <thread>

#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

TEST_CASE("random and adjacent indices across pages and layers fetch byte-exact", "[fetch]") {
  DaemonFixture daemon;
  const int64_t tokens = 3000;  // ~8 pages of 372 tokens per layer
  auto region = MakePatternRegion(daemon.client(), "seq-a", 7, 656, tokens, 1);
  REQUIRE(region.ok());
  REQUIRE((*region)->transport_name() == "shm");
  REQUIRE((*region)->entry_stride_bytes() == 704);

  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> any(0, tokens - 1);
  std::vector<int32_t> random(2048);
  for (auto& t : random) t = any(rng);
  REQUIRE(VerifyAllLayers(**region, 1, random) == 0);

  // Adjacent runs that straddle page boundaries (372 tokens per 256 KiB page).
  std::vector<int32_t> adjacent(1000);
  std::iota(adjacent.begin(), adjacent.end(), 300);
  REQUIRE(VerifyAllLayers(**region, 1, adjacent) == 0);

  // Edges: first, last, duplicates, unsorted.
  std::vector<int32_t> edges = {static_cast<int32_t>(tokens - 1), 0, 371, 372, 371, 0};
  REQUIRE(VerifyAllLayers(**region, 1, edges) == 0);

  // A second client opening by key sees the same bytes.
  auto other = daemon.NewClient();
  auto opened = other->Open("seq-a");
  REQUIRE(opened.ok());
  REQUIRE((*opened)->committed_tokens() == tokens);
  REQUIRE(VerifyAllLayers(**opened, 1, random) == 0);
}

TEST_CASE("odd entry sizes and the indexer-key shape round-trip", "[fetch]") {
  DaemonFixture daemon;
  for (int32_t entry : {1, 63, 64, 65, 132, 656, 4096}) {
    INFO("entry_bytes " << entry);
    auto region = MakePatternRegion(daemon.client(), "e" + std::to_string(entry), 2, entry, 500, entry);
    REQUIRE(region.ok());
    std::vector<int32_t> idx = {0, 499, 250, 251, 252, 7};
    REQUIRE(VerifyAllLayers(**region, entry, idx) == 0);
  }
}

TEST_CASE("a batched fetch covers many regions and layers in one call", "[fetch][batch]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  const int kSeqs = 6, kLayers = 5, kTokens = 900, kK = 256;
  std::vector<std::shared_ptr<Region>> regions;
  for (int s = 0; s < kSeqs; ++s) {
    auto r = MakePatternRegion(daemon.client(), "batch-" + std::to_string(s), kLayers, 656, kTokens, 100 + s, true);
    REQUIRE(r.ok());
    regions.push_back(*r);
  }
  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> any(0, kTokens - 1);
  std::vector<std::vector<int32_t>> indices;
  std::vector<std::vector<std::byte>> dst;
  std::vector<FetchItem> items;
  for (int s = 0; s < kSeqs; ++s) {
    for (int l = 0; l < kLayers; ++l) {
      indices.emplace_back(kK);
      for (auto& t : indices.back()) t = any(rng);
      dst.emplace_back(kK * 656);
    }
  }
  for (int s = 0, i = 0; s < kSeqs; ++s) {
    for (int l = 0; l < kLayers; ++l, ++i) items.push_back({regions[s].get(), l, indices[i], absl::MakeSpan(dst[i])});
  }
  REQUIRE(daemon.client().FetchBatch(items).ok());
  for (int s = 0, i = 0; s < kSeqs; ++s) {
    for (int l = 0; l < kLayers; ++l, ++i) REQUIRE(CountWrong(100 + s, l, indices[i], 656, dst[i]) == 0);
  }

  // One bad item fails the whole batch, names the item, and writes nothing anywhere.
  for (auto& d : dst) std::fill(d.begin(), d.end(), std::byte{0x5a});
  indices[17][100] = kTokens;
  auto refused = daemon.client().FetchBatch(items);
  REQUIRE(refused.code() == absl::StatusCode::kOutOfRange);
  REQUIRE(std::string(refused.message()).find("batch item 17") != std::string::npos);
  for (auto& d : dst) REQUIRE(std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0x5a}; }));
}

TEST_CASE("eight client threads (and two clients) fetch concurrently, byte-exact", "[fetch][threads]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  const int kTokens = 4000;
  auto a = MakePatternRegion(daemon.client(), "conc-a", 4, 656, kTokens, 11, true);
  auto b = MakePatternRegion(daemon.client(), "conc-b", 4, 656, kTokens, 12, true);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto second = daemon.NewClient();
  auto b2 = second->Open("conc-b");
  REQUIRE(b2.ok());
  std::atomic<int64_t> wrong{0}, errors{0}, fetched{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 10; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(th);
      std::uniform_int_distribution<int32_t> any(0, kTokens - 1);
      std::vector<int32_t> idx(512);
      std::vector<std::byte> dst(idx.size() * 656);
      Region& r = th % 3 == 0 ? **a : th % 3 == 1 ? **b : **b2;
      uint64_t salt = th % 3 == 0 ? 11 : 12;
      for (int it = 0; it < 60; ++it) {
        for (auto& t : idx) t = any(rng);
        int32_t layer = it % 4;
        if (!r.Fetch(layer, idx, absl::MakeSpan(dst)).ok()) {
          errors++;
          continue;
        }
        wrong += CountWrong(salt, layer, idx, 656, dst);
        fetched += static_cast<int64_t>(idx.size());
      }
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(errors == 0);
  REQUIRE(wrong == 0);
  REQUIRE(fetched == 10 * 60 * 512);
}

TEST_CASE("large batches are copied by helper threads, byte-exact, also from several callers at once", "[fetch][batch][threads]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  auto client = daemon.NewClient({.fetch_threads = 3, .fetch_parallel_min_bytes = 1});
  const int kLayers = 8, kTokens = 3000, kK = 700;
  auto region = MakePatternRegion(*client, "parallel", kLayers, 656, kTokens, 31, true);
  REQUIRE(region.ok());
  std::atomic<int64_t> wrong{0}, errors{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&, c] {
      std::mt19937 rng(c);
      std::uniform_int_distribution<int32_t> any(0, kTokens - 1);
      std::vector<std::vector<int32_t>> idx(kLayers, std::vector<int32_t>(kK));
      std::vector<std::vector<std::byte>> dst(kLayers, std::vector<std::byte>(kK * 656));
      for (int round = 0; round < 20; ++round) {
        std::vector<FetchItem> items;
        for (int l = 0; l < kLayers; ++l) {
          for (auto& t : idx[l]) t = any(rng);
          items.push_back({region->get(), l, idx[l], absl::MakeSpan(dst[l])});
        }
        if (!client->FetchBatch(items).ok()) {
          errors++;
          continue;
        }
        for (int l = 0; l < kLayers; ++l) wrong += CountWrong(31, l, idx[l], 656, dst[l]);
      }
    });
  }
  for (auto& t : callers) t.join();
  REQUIRE(errors == 0);
  REQUIRE(wrong == 0);
  ClientOptions bad;
  bad.server = daemon.address();
  bad.fetch_threads = 0;
  REQUIRE(Client::Connect(bad).status().code() == absl::StatusCode::kInvalidArgument);
}
