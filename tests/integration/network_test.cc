// The network data paths against the real daemon on loopback: the server-side gather over TCP
// ("tcp"), one-sided RMA over libfabric's tcp provider ("fabric"), the same with every
// unregistered buffer going through the registered staging area ("fabric-staged"), and native
// verbs where the machine has an RDMA device (see verbs_test.cc).
#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <chrono>
#include <numeric>
#include <random>
#include <thread>

#include "absl/synchronization/mutex.h"

#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {

// A client forced onto one network path, and the name its regions report.
struct NetworkPath {
  std::string option;
  bool staged;
  std::string reported;
};

NetworkPath PickPath() {
  return GENERATE(NetworkPath{"tcp", false, "tcp-gather"}, NetworkPath{"fabric", false, "fabric"},
                  NetworkPath{"fabric", true, "fabric"});
}

ClientOptions Over(const NetworkPath& p, ClientOptions o = {}) {
  o.transport = p.option;
  o.fabric_force_staging = p.staged;
  return o;
}

}  // namespace

TEST_CASE("over the network paths: writes, appends and fetches are byte-exact across pages and layers", "[tcp][fabric]") {
  const NetworkPath path = PickPath();
  INFO("transport " << path.option << (path.staged ? " (staged)" : ""));
  DaemonFixture daemon;
  auto client = daemon.NewClient(Over(path));
  auto region = MakePatternRegion(*client, "tcp-a", 4, 656, 2000, 3, false);
  REQUIRE(region.ok());
  REQUIRE((*region)->transport_name() == path.reported);
  std::vector<std::byte> step(4 * 656);
  for (int64_t t = 2000; t < 2100; ++t) {
    for (int32_t l = 0; l < 4; ++l) FillEntry(3, l, t, 656, step.data() + l * 656);
    REQUIRE((*region)->Append(step, 1).ok());
  }
  REQUIRE((*region)->Seal().ok());
  std::mt19937 rng(5);
  std::vector<int32_t> random(2048);
  for (auto& t : random) t = static_cast<int32_t>(rng() % 2100);
  REQUIRE(VerifyAllLayers(**region, 3, random) == 0);
  std::vector<int32_t> adjacent(800);
  std::iota(adjacent.begin(), adjacent.end(), 300);
  REQUIRE(VerifyAllLayers(**region, 3, adjacent) == 0);
  REQUIRE((*region)->Verify().ok());  // every committed byte, read over the network, matches the seal
  // Into a registered buffer (used in place, no staging) and out of it again.
  std::vector<std::byte> registered(random.size() * 656);
  auto registered_status = client->RegisterBuffer(registered.data(), registered.size());
  INFO(registered_status.ToString());
  REQUIRE(registered_status.ok());
  REQUIRE((*region)->Fetch(2, random, absl::MakeSpan(registered)).ok());
  REQUIRE(CountWrong(3, 2, random, 656, registered) == 0);
  REQUIRE(client->UnregisterBuffer(registered.data()).ok());
  REQUIRE(client->UnregisterBuffer(registered.data()).code() == absl::StatusCode::kNotFound);

  // A shm reader and a tcp reader agree.
  auto shm = daemon.client().Open("tcp-a");
  REQUIRE(shm.ok());
  REQUIRE((*shm)->transport_name() == "shm");
  REQUIRE(VerifyAllLayers(**shm, 3, random) == 0);
  // Out-of-range indices are refused before anything crosses the wire.
  std::vector<int32_t> past = {5, 2100};
  std::vector<std::byte> dst(2 * 656);
  REQUIRE((*region)->Fetch(0, past, absl::MakeSpan(dst)).code() == absl::StatusCode::kOutOfRange);
}

TEST_CASE("over the network paths: batched fetches and 8 concurrent threads are byte-exact", "[tcp][fabric][threads]") {
  const NetworkPath path = PickPath();
  INFO("transport " << path.option << (path.staged ? " (staged)" : ""));
  DaemonFixture daemon({.pool_size = "128MiB"});
  auto client = daemon.NewClient(Over(path, {.fetch_threads = 2, .fetch_parallel_min_bytes = 1}));
  std::vector<std::shared_ptr<Region>> regions;
  for (int s = 0; s < 4; ++s) {
    auto r = MakePatternRegion(*client, "tb-" + std::to_string(s), 3, 656, 1500, 40 + s, true);
    REQUIRE(r.ok());
    regions.push_back(*r);
  }
  std::atomic<int64_t> wrong{0}, errors{0};
  absl::Mutex first_error_mu;
  std::string first_error;
  std::vector<std::thread> threads;
  for (int th = 0; th < 8; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(th);
      for (int round = 0; round < 10; ++round) {
        std::vector<std::vector<int32_t>> idx(12, std::vector<int32_t>(256));
        std::vector<std::vector<std::byte>> dst(12, std::vector<std::byte>(256 * 656));
        std::vector<FetchItem> items;
        for (int i = 0; i < 12; ++i) {
          for (auto& t : idx[i]) t = static_cast<int32_t>(rng() % 1500);
          items.push_back({regions[i % 4].get(), i % 3, idx[i], absl::MakeSpan(dst[i])});
        }
        if (auto s = client->FetchBatch(items); !s.ok()) {
          if (errors++ == 0) {
            absl::MutexLock lock(&first_error_mu);
            first_error = s.ToString();
          }
          continue;
        }
        for (int i = 0; i < 12; ++i) wrong += CountWrong(40 + i % 4, i % 3, idx[i], 656, dst[i]);
      }
    });
  }
  for (auto& t : threads) t.join();
  INFO("first error: " << first_error);
  REQUIRE(errors == 0);
  REQUIRE(wrong == 0);
}

TEST_CASE("over the network paths: a daemon killed mid-fetch gives a clear error within the timeout, never a hang", "[tcp][fabric][fault]") {
  const NetworkPath path = PickPath();
  INFO("transport " << path.option << (path.staged ? " (staged)" : ""));
  DaemonFixture daemon({.pool_size = "64MiB"});
  auto client = daemon.NewClient(Over(path, {.rpc_timeout_ms = 1500}));
  auto region = MakePatternRegion(*client, "doomed", 8, 656, 3000, 9, true);
  REQUIRE(region.ok());
  std::atomic<bool> stop{false};
  std::atomic<int64_t> wrong{0}, ok{0}, failed{0};
  std::atomic<int64_t> slowest_failure_ms{0};
  std::mutex unclear_mu;
  std::string unclear;
  std::thread reader([&] {
    std::vector<int32_t> idx(2048);
    std::mt19937 rng(1);
    std::vector<std::byte> dst(idx.size() * 656);
    while (!stop) {
      for (auto& t : idx) t = static_cast<int32_t>(rng() % 3000);
      auto started = std::chrono::steady_clock::now();
      auto st = (*region)->Fetch(static_cast<int32_t>(rng() % 8), idx, absl::MakeSpan(dst));
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
      if (st.ok()) {
        ok++;
      } else {
        failed++;
        slowest_failure_ms = std::max<int64_t>(slowest_failure_ms, ms);
        if (st.code() != absl::StatusCode::kUnavailable && st.code() != absl::StatusCode::kDeadlineExceeded &&
            st.code() != absl::StatusCode::kFailedPrecondition && st.code() != absl::StatusCode::kNotFound) {
          wrong++;  // an error, but not a clear one
          std::lock_guard<std::mutex> lock(unclear_mu);
          unclear = st.ToString();
        }
      }
    }
  });
  // Kill the daemon once fetches are flowing (bounded: a slow, instrumented build may need a while
  // for the first one), so the kill lands mid-fetch.
  for (int i = 0; i < 600 && ok == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  daemon.Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  stop = true;
  reader.join();
  REQUIRE(ok > 0);
  REQUIRE(failed > 0);
  INFO("an unclear error: " << unclear);
  REQUIRE(wrong == 0);
  REQUIRE(slowest_failure_ms <= 2500);
}

TEST_CASE("with the data path disabled a remote-only client gets a clear FAILED_PRECONDITION", "[tcp]") {
  DaemonFixture daemon({.extra_args = {"--data-listen", ""}});
  auto client = daemon.NewClient({.transport = "tcp"});
  auto region = client->Create({"nowhere", 1, 656, 10, 0});
  REQUIRE(region.status().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(std::string(region.status().message()).find("no data-plane transport") != std::string::npos);
  // The region was given back, not left behind.
  REQUIRE(daemon.client().Open("nowhere").status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("auto picks a transport and says why: in the client and in sparsekvctl status", "[tcp][fabric][ctl]") {
  DaemonFixture daemon({.lease_ms = 600});
  auto local = daemon.NewClient({});
  auto a = local->Create({"pick-a", 1, 656, 10, 0});
  REQUIRE(a.ok());
  REQUIRE((*a)->transport_name() == "shm");
  REQUIRE(local->TransportChoices().size() == 1);
  REQUIRE(local->TransportChoices()[0].find("shm: the pool can be mapped on this host") == 0);
  auto remote = daemon.NewClient({.transport = "fabric"});
  auto b = remote->Open("pick-a");
  REQUIRE(b.ok());
  REQUIRE((*b)->transport_name() == "fabric");
  // Clients report their choice with their lease renewals; status shows it with the offered paths.
  std::string status;
  for (int i = 0; i < 50; ++i) {
    status = daemon.Ctl("status").out;
    if (status.find("fabric, because forced") != std::string::npos && status.find("shm, because") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  INFO(status);
  REQUIRE(status.find("shm, because the pool can be mapped on this host") != std::string::npos);
  REQUIRE(status.find("fabric, because forced by ClientOptions.transport") != std::string::npos);
  REQUIRE(status.find("tcp-gather: server-side gather on 127.0.0.1:") != std::string::npos);
  REQUIRE(status.find("fabric: provider tcp;ofi_rxm at 127.0.0.1:") != std::string::npos);
  REQUIRE(status.find("software RMA") != std::string::npos);
  REQUIRE(status.find("verbs: ") != std::string::npos);
  auto json = daemon.Ctl("status --json").out;
  REQUIRE(json.find("\"client_transports\":[{") != std::string::npos);
  REQUIRE(json.find("\"data_paths\":[\"shm/CXL: ") != std::string::npos);
}

TEST_CASE("a transport the daemon does not offer is refused with the reason", "[fabric]") {
  DaemonFixture daemon({.extra_args = {"--fabric-provider", "off"}});
  auto client = daemon.NewClient({.transport = "fabric"});
  auto region = client->Create({"no-fabric", 1, 656, 10, 0});
  REQUIRE(region.status().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(std::string(region.status().message()).find("the daemon offers no libfabric endpoint") != std::string::npos);
  auto bogus = daemon.NewClient({.transport = "carrier-pigeon"});
  REQUIRE(bogus->Create({"no-pigeon", 1, 656, 10, 0}).status().code() == absl::StatusCode::kInvalidArgument);
  // auto still finds a way: the region was given back by the refused clients, shm works.
  REQUIRE(daemon.client().Create({"no-fabric", 1, 656, 10, 0}).ok());
}

TEST_CASE("over the network paths: unknown regions and out-of-range indices get exact codes", "[tcp][fabric]") {
  const NetworkPath path = PickPath();
  INFO("transport " << path.option << (path.staged ? " (staged)" : ""));
  DaemonFixture daemon;
  auto client = daemon.NewClient(Over(path));
  REQUIRE(client->Open("never-made").status().code() == absl::StatusCode::kNotFound);
  auto region = MakePatternRegion(*client, "edges", 2, 656, 300, 4, true);
  REQUIRE(region.ok());
  std::vector<std::byte> dst(3 * 656);
  std::vector<int32_t> past = {0, 299, 300};
  REQUIRE((*region)->Fetch(0, past, absl::MakeSpan(dst)).code() == absl::StatusCode::kOutOfRange);
  std::vector<int32_t> negative = {-1};
  REQUIRE((*region)->Fetch(0, negative, absl::MakeSpan(dst)).code() == absl::StatusCode::kOutOfRange);
  std::vector<int32_t> fine = {0, 299, 150};
  REQUIRE((*region)->Fetch(2, fine, absl::MakeSpan(dst)).code() == absl::StatusCode::kOutOfRange);  // layer 2 of 2
  REQUIRE((*region)->Fetch(1, fine, absl::MakeSpan(dst)).ok());
  REQUIRE(CountWrong(4, 1, fine, 656, dst) == 0);
}

TEST_CASE("over fabric: many threads (more than cores, each its own lane) fetch at once, byte-exact, while a writer appends", "[fabric][concurrency]") {
  DaemonFixture daemon({.pool_size = "128MiB"});
  auto client = daemon.NewClient({.transport = "fabric"});
  constexpr int kRegions = 3, kTokens = 3000, kLayers = 4, kThreads = 12;
  std::vector<std::shared_ptr<Region>> regions;
  for (int r = 0; r < kRegions; ++r) {
    auto made = MakePatternRegion(*client, "many-" + std::to_string(r), kLayers, 656, kTokens, 40 + r, r != 0);
    REQUIRE(made.ok());
    regions.push_back(*made);
  }
  std::atomic<int64_t> wrong{0}, failed{0}, batches{0};
  std::atomic<bool> stop{false};
  std::mutex first_mu;
  std::string first_error;
  std::vector<std::thread> readers;
  for (int t = 0; t < kThreads; ++t) {
    readers.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      std::vector<std::vector<int32_t>> idx(kRegions * 2);
      std::vector<std::vector<std::byte>> dst(idx.size());
      for (int round = 0; round < 40; ++round) {
        std::vector<FetchItem> items;
        for (size_t i = 0; i < idx.size(); ++i) {
          idx[i].resize(64 + rng() % 512);
          for (auto& x : idx[i]) x = static_cast<int32_t>(rng() % kTokens);
          dst[i].assign(idx[i].size() * 656, std::byte{0});
          items.push_back({regions[i % kRegions].get(), static_cast<int32_t>(i % kLayers), idx[i], absl::MakeSpan(dst[i])});
        }
        auto st = client->FetchBatch(items);
        if (!st.ok()) {
          failed++;
          std::lock_guard<std::mutex> lock(first_mu);
          if (first_error.empty()) first_error = st.ToString();
          continue;
        }
        batches++;
        for (size_t i = 0; i < idx.size(); ++i) {
          wrong += CountWrong(40 + static_cast<int>(i % kRegions), static_cast<int32_t>(i % kLayers), idx[i], 656, dst[i]);
        }
      }
    });
  }
  // The unsealed region keeps growing meanwhile (writes go through the checked tcp path).
  std::thread writer([&] {
    std::vector<std::byte> step(kLayers * 656);
    for (int64_t t = kTokens; t < kTokens + 200; ++t) {
      for (int32_t l = 0; l < kLayers; ++l) FillEntry(40, l, t, 656, step.data() + l * 656);
      if (!regions[0]->Append(step, 1).ok()) failed++;
    }
  });
  for (auto& th : readers) th.join();
  stop = true;
  writer.join();
  INFO(first_error);
  REQUIRE(failed == 0);
  REQUIRE(wrong == 0);
  REQUIRE(batches == kThreads * 40);
  REQUIRE(VerifyAllLayers(*regions[0], 40, {0, kTokens - 1, kTokens + 1}) == 0);
}
