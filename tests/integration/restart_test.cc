// Restart without loss: the daemon is killed (SIGKILL) under load and started again; every
// sealed region comes back with identical keys and bytes, unsealed ones never come back as
// complete, and clients holding handles continue or get a clear error.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_format.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/notify_socket.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {

bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::vector<int32_t> Every(int64_t n, int step) {
  std::vector<int32_t> idx;
  for (int64_t t = 0; t < n; t += step) idx.push_back(static_cast<int32_t>(t));
  idx.push_back(static_cast<int32_t>(n - 1));
  return idx;
}

// Fills a daemon with sealed regions (and one unsealed), returns their keys.
std::vector<std::string> Populate(Client& client, int sealed) {
  std::vector<std::string> keys;
  for (int i = 0; i < sealed; ++i) {
    std::string key = absl::StrFormat("seq-%d", i);
    auto r = MakePatternRegion(client, key, 3, 656, 700 + 50 * i, 100 + i, true);
    REQUIRE(r.ok());
    keys.push_back(key);
  }
  auto unsealed = MakePatternRegion(client, "in-flight", 3, 656, 400, 999, false);
  REQUIRE(unsealed.ok());
  return keys;
}

void CheckRestored(DaemonFixture& daemon, const std::vector<std::string>& keys) {
  auto client = daemon.NewClient();
  for (size_t i = 0; i < keys.size(); ++i) {
    auto r = client->Open(keys[i]);
    REQUIRE(r.ok());
    REQUIRE((*r)->sealed());
    REQUIRE((*r)->committed_tokens() == static_cast<int64_t>(700 + 50 * i));
    REQUIRE(VerifyAllLayers(**r, 100 + i, Every((*r)->committed_tokens(), 7)) == 0);
    REQUIRE((*r)->Verify().ok());
    REQUIRE(daemon.Ctl("verify " + keys[i]).exit_code == 0);
  }
  REQUIRE(client->Open("in-flight").status().code() == absl::StatusCode::kNotFound);
}

}  // namespace

TEST_CASE("a file-backed daemon killed with SIGKILL restarts with every sealed region intact", "[restart]") {
  TempDir state;
  std::string pool = state.path() + "/pool";
  DaemonFixture daemon({.pool_size = "64MiB", .lease_ms = 1000,
                        .extra_args = {"--backing", "file:" + pool, "--state-dir", state.path() + "/state"}});
  auto keys = Populate(daemon.client(), 6);
  REQUIRE(daemon.client().Delete("seq-5").ok());  // a deletion is journaled too
  keys.pop_back();
  // A client holds a handle across the restart.
  auto holder = daemon.NewClient();
  auto held = holder->Open("seq-2");
  REQUIRE(held.ok());

  // Load while the daemon dies.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> wrong{0};
  std::thread reader([&] {
    auto idx = Every(800, 3);
    std::vector<std::byte> dst(idx.size() * 656);
    while (!stop) {
      if ((*held)->Fetch(1, idx, absl::MakeSpan(dst)).ok()) wrong += CountWrong(102, 1, idx, 656, dst);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  daemon.Kill();
  auto started = std::chrono::steady_clock::now();
  daemon.Restart();
  double restart_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  stop = true;
  reader.join();
  REQUIRE(wrong == 0);
  INFO("restart took " << restart_ms << " ms\n" << daemon.Log());
  REQUIRE(Has(daemon.Log(), "restored 5 sealed regions"));
  CheckRestored(daemon, keys);
  REQUIRE(daemon.client().Open("seq-5").status().code() == absl::StatusCode::kNotFound);

  // The handle held across the restart continues (its renewal reopened the same region).
  auto idx = Every(800, 5);
  std::vector<std::byte> dst(idx.size() * 656);
  REQUIRE((*held)->Fetch(0, idx, absl::MakeSpan(dst)).ok());
  REQUIRE(CountWrong(102, 0, idx, 656, dst) == 0);

  // The restored pool is usable: new regions are created once the quarantine has passed.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  REQUIRE(MakePatternRegion(daemon.client(), "after", 3, 656, 5000, 7, true).ok());
  // And a second restart keeps the new region too.
  daemon.Kill();
  daemon.Restart();
  auto after = daemon.client().Open("after");
  INFO(after.status().ToString() << "\n" << daemon.Log());
  REQUIRE(after.ok());
  REQUIRE(VerifyAllLayers(**after, 7, Every(5000, 11)) == 0);
}

TEST_CASE("a changed pool on restart drops the old regions with a clear log line", "[restart]") {
  TempDir state;
  std::string pool = state.path() + "/pool";
  DaemonFixture daemon({.pool_size = "64MiB",
                        .extra_args = {"--backing", "file:" + pool, "--state-dir", state.path() + "/state"}});
  Populate(daemon.client(), 2);
  daemon.Kill();
  daemon.options().pool_size = "32MiB";
  daemon.Restart();
  REQUIRE(Has(daemon.Log(), "2 sealed regions of the previous run are lost: pool size changed"));
  REQUIRE(daemon.client().Open("seq-0").status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("a memfd pool survives a restart through systemd's descriptor store", "[restart][systemd]") {
  // The test plays systemd: it receives FDSTORE=1 with the pool descriptor on NOTIFY_SOCKET,
  // keeps it, and hands it back to the restarted daemon as LISTEN_FDS.
  TempDir dir;
  NotifySocket notify(dir.path() + "/notify");
  DaemonFixture daemon({.pool_size = "32MiB", .lease_ms = 1000,
                        .extra_args = {"--state-dir", dir.path() + "/state"},
                        .env = {"NOTIFY_SOCKET=" + notify.path()}});
  REQUIRE(notify.ReceiveUntil("FDSTORE=1", 5000));
  int stored_fd = notify.stored_fd();
  REQUIRE(stored_fd >= 0);
  auto keys = Populate(daemon.client(), 3);
  daemon.Kill();
  daemon.options().inherit_pool_fd = stored_fd;
  daemon.Restart();
  REQUIRE(Has(daemon.Log(), "took the pool back from systemd's descriptor store"));
  REQUIRE(Has(daemon.Log(), "restored 3 sealed regions"));
  CheckRestored(daemon, keys);
}

TEST_CASE("a memfd daemon with a state dir but without systemd says a restart loses the pool", "[restart]") {
  TempDir dir;
  DaemonFixture daemon({.extra_args = {"--state-dir", dir.path() + "/state"}});
  REQUIRE(Has(daemon.Log(), "not run under systemd: a restart loses this memfd pool"));
  Populate(daemon.client(), 1);
  daemon.Kill();
  daemon.Restart();
  REQUIRE(Has(daemon.Log(), "1 sealed regions of the previous run are lost: the pool memory did not survive"));
}

TEST_CASE("network-path handles follow a restarted daemon to its new data ports", "[restart][tcp][fabric]") {
  const std::string path = GENERATE(std::string("tcp"), std::string("fabric"));
  INFO("transport " << path);
  TempDir state;
  DaemonFixture daemon({.pool_size = "64MiB", .lease_ms = 600,
                        .extra_args = {"--backing", "file:" + state.path() + "/pool", "--state-dir", state.path() + "/state"}});
  auto keys = Populate(daemon.client(), 3);
  auto remote = daemon.NewClient({.rpc_timeout_ms = 2000, .transport = path});
  auto held = remote->Open("seq-1");
  REQUIRE(held.ok());
  auto idx = Every(750, 3);  // seq-1 holds 750 tokens
  std::vector<std::byte> dst(idx.size() * 656);
  { auto st0 = (*held)->Fetch(1, idx, absl::MakeSpan(dst)); INFO(st0.ToString()); REQUIRE(st0.ok()); }
  daemon.Kill();
  daemon.Restart();  // same control port; the data ports are ephemeral and change
  // Fetches fail clearly until the renewer has reopened the region on the new daemon, then work.
  bool recovered = false;
  for (int i = 0; i < 60 && !recovered; ++i) {
    auto st = (*held)->Fetch(1, idx, absl::MakeSpan(dst));
    if (st.ok()) {
      recovered = true;
    } else {
      INFO(st.ToString());
      REQUIRE((st.code() == absl::StatusCode::kUnavailable || st.code() == absl::StatusCode::kDeadlineExceeded ||
               st.code() == absl::StatusCode::kFailedPrecondition));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  INFO(daemon.Log());
  REQUIRE(recovered);
  REQUIRE(CountWrong(101, 1, idx, 656, dst) == 0);
}

TEST_CASE("after a restart only pages a client could still read are quarantined: a create at once succeeds", "[restart][quarantine]") {
  TempDir state;
  std::string pool = state.path() + "/pool";
  // A lease far longer than the create's deadline: waiting out a quarantine cannot help here.
  DaemonFixture daemon({.pool_size = "64MiB", .lease_ms = 30000,
                        .extra_args = {"--backing", "file:" + pool, "--state-dir", state.path() + "/state"}});
  REQUIRE(MakePatternRegion(daemon.client(), "kept", 3, 656, 700, 5, true).ok());
  // Unsealed: not restored, and a client of the previous run may still read its 6 pages.
  auto in_flight = MakePatternRegion(daemon.client(), "in-flight", 3, 656, 400, 6, false);
  REQUIRE(in_flight.ok());
  daemon.Kill();
  daemon.Restart();
  auto stats = daemon.client().Stats();
  REQUIRE(stats.ok());
  INFO(daemon.Log());
  REQUIRE(stats->quarantined_bytes == 6 * 256 * 1024);  // 3 layers x 2 pages of the unsealed region
  // 48 MiB of the 64 MiB pool, at once (before: every free page was quarantined for a lease period).
  auto big = MakePatternRegion(daemon.client(), "big", 4, 656, 16000, 7, true);
  INFO(big.status().ToString());
  REQUIRE(big.ok());
  REQUIRE(VerifyAllLayers(**big, 7, Every(16000, 13)) == 0);
}

TEST_CASE("a create that fits once the quarantine drains waits within its deadline instead of failing", "[restart][quarantine]") {
  TempDir state;
  std::string pool = state.path() + "/pool";
  DaemonFixture daemon({.pool_size = "16MiB", .lease_ms = 3000,
                        .extra_args = {"--backing", "file:" + pool, "--state-dir", state.path() + "/state"}});
  // Unsealed and nearly the whole pool: after the restart its pages are quarantined for a lease.
  REQUIRE(MakePatternRegion(daemon.client(), "in-flight", 2, 656, 10000, 6, false).ok());
  daemon.Kill();
  daemon.Restart();
  auto stats = daemon.client().Stats();
  REQUIRE(stats.ok());
  REQUIRE(stats->quarantined_bytes > 12 * 1024 * 1024);
  auto started = std::chrono::steady_clock::now();
  auto big = MakePatternRegion(daemon.client(), "big", 2, 656, 10000, 7, true);  // default 5 s deadline
  double waited_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  INFO(big.status().ToString() << " after " << waited_ms << " ms\n" << daemon.Log());
  REQUIRE(big.ok());
  REQUIRE(VerifyAllLayers(**big, 7, Every(10000, 17)) == 0);
}
