// Correctness holes found from outside (issue 10), each pinned by a test that failed before the
// fix: writes visible at commit on every transport, one writer per region and read-only readers,
// no arithmetic overflow on a caller's numbers, and a Seal that says what it seals.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "client/transports/tcp_gather_transport.h"
#include "common/entry_pattern.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {

bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Busy loops beside the client, as on a loaded decode host: they make a write that has not
// landed yet when Commit returns far more likely to be seen.
class CpuHogs {
 public:
  explicit CpuHogs(int n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this] {
        volatile uint64_t x = 0;
        while (!stop_.load(std::memory_order_relaxed)) x = x * 6364136223846793005ULL + 1;
      });
    }
  }
  ~CpuHogs() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

}  // namespace

TEST_CASE("a committed token is readable with its new bytes at once, on every transport, and seal checksums match", "[correctness][visibility]") {
  const std::string transport = GENERATE(std::string("shm"), std::string("tcp"), std::string("fabric"));
  INFO("writer transport " << transport);
  DaemonFixture daemon({.pool_size = "64MiB"});
  auto writer_client = daemon.NewClient({.transport = transport});
  auto reader_client = daemon.NewClient({.transport = "shm"});
  CpuHogs hogs(2);
  constexpr int kLayers = 3, kEntry = 656, kRounds = 12, kStep = 40;
  for (int round = 0; round < kRounds; ++round) {
    const std::string key = "vis-" + std::to_string(round);
    auto region = writer_client->Create({key, kLayers, kEntry, kStep * 20, 0});
    REQUIRE(region.ok());
    REQUIRE((*region)->transport_name() == (transport == "tcp" ? "tcp-gather" : transport));
    auto reader = reader_client->Open(key);
    REQUIRE(reader.ok());
    std::vector<std::byte> dst(kStep * kEntry);
    for (int64_t first = 0; first < kStep * 20; first += kStep) {
      // Prefill-style: Write then Commit; the reader reads the just-committed tokens at once.
      REQUIRE(WritePattern(**region, round, first, kStep).ok());
      REQUIRE((*region)->Commit(first + kStep).ok());
      std::vector<int32_t> idx(kStep);
      for (int i = 0; i < kStep; ++i) idx[i] = static_cast<int32_t>(first + i);
      for (int32_t l = 0; l < kLayers; ++l) {
        REQUIRE((*reader)->Fetch(l, idx, absl::MakeSpan(dst)).ok());
        REQUIRE(CountWrong(round, l, idx, kEntry, dst) == 0);
      }
    }
    // Decode-style: Append one token (write + commit in one call), read it at once.
    std::vector<std::byte> step(kLayers * kEntry);
    REQUIRE((*region)->Reserve(kStep * 20 + 10).ok());
    for (int64_t t = kStep * 20; t < kStep * 20 + 10; ++t) {
      for (int32_t l = 0; l < kLayers; ++l) FillEntry(round, l, t, kEntry, step.data() + l * kEntry);
      REQUIRE((*region)->Append(step, 1).ok());
      std::vector<int32_t> idx = {static_cast<int32_t>(t)};
      for (int32_t l = 0; l < kLayers; ++l) {
        REQUIRE((*reader)->Fetch(l, idx, absl::MakeSpan(dst.data(), kEntry)).ok());
        REQUIRE(CountWrong(round, l, idx, kEntry, std::vector<std::byte>(dst.begin(), dst.begin() + kEntry)) == 0);
      }
    }
    // The daemon checksums what is in the pool when Seal arrives: the final bytes.
    REQUIRE((*region)->Seal().ok());
    auto verified = (*region)->Verify();
    INFO(verified.ToString());
    REQUIRE(verified.ok());
    REQUIRE(daemon.Ctl("verify " + key).exit_code == 0);
  }
}

TEST_CASE("a handle from Open is read-only: every write call fails with FAILED_PRECONDITION, on every transport", "[correctness][writer]") {
  const std::string transport = GENERATE(std::string("shm"), std::string("tcp"), std::string("fabric"));
  INFO("transport " << transport);
  DaemonFixture daemon;
  auto client = daemon.NewClient({.transport = transport});
  auto region = MakePatternRegion(*client, "ro", 2, 656, 100, 1, false);
  REQUIRE(region.ok());
  REQUIRE((*region)->writable());
  auto reader = client->Open("ro");
  REQUIRE(reader.ok());
  REQUIRE_FALSE((*reader)->writable());
  std::vector<std::byte> entry(656), two(2 * 656);
  auto write = (*reader)->Write(0, 0, entry);
  REQUIRE(write.code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(Has(std::string(write.message()), "read-only"));
  REQUIRE((*reader)->Append(two, 1).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE((*reader)->Reserve(1000).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE((*reader)->Commit(100).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE((*reader)->Seal().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(VerifyAllLayers(**reader, 1, {0, 50, 99}) == 0);  // nothing of it landed

  // After the seal nobody writes, not even the handle that wrote before.
  REQUIRE((*region)->Seal().ok());
  REQUIRE_FALSE((*region)->writable());
  REQUIRE((*region)->Write(0, 0, entry).code() == absl::StatusCode::kFailedPrecondition);
  auto late = client->OpenForWrite("ro");
  REQUIRE(late.status().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(Has(std::string(late.status().message()), "sealed"));
  REQUIRE((*reader)->Refresh().ok());  // learns the seal and its checksum
  REQUIRE((*reader)->Verify().ok());
}

TEST_CASE("one writer per region: the write lease is handed from prefill to decode, never shared", "[correctness][writer]") {
  DaemonFixture daemon;
  auto prefill = daemon.NewClient();
  auto decode = daemon.NewClient({.transport = "tcp"});
  auto region = MakePatternRegion(*prefill, "handoff", 2, 656, 300, 4, false);
  REQUIRE(region.ok());
  // While prefill holds the write lease, decode cannot take it; the message says who and how long.
  auto refused = decode->OpenForWrite("handoff");
  REQUIRE(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(Has(std::string(refused.status().message()), "held for writing by another handle"));
  REQUIRE((*region)->ReleaseWrite().ok());
  REQUIRE_FALSE((*region)->writable());
  std::vector<std::byte> entry(2 * 656);
  REQUIRE((*region)->Append(entry, 1).code() == absl::StatusCode::kFailedPrecondition);
  // Now decode takes it and appends; prefill's handle still reads.
  auto taken = decode->OpenForWrite("handoff");
  REQUIRE(taken.ok());
  REQUIRE((*taken)->writable());
  for (int32_t l = 0; l < 2; ++l) FillEntry(4, l, 300, 656, entry.data() + l * 656);
  REQUIRE((*taken)->Append(entry, 1).ok());
  REQUIRE((*region)->Refresh().ok());
  REQUIRE((*region)->committed_tokens() == 301);
  REQUIRE(VerifyAllLayers(**region, 4, {0, 299, 300}) == 0);
  // A second writer is refused while decode holds it; once decode's handle is gone, it is free.
  REQUIRE(prefill->OpenForWrite("handoff").status().code() == absl::StatusCode::kFailedPrecondition);
  taken->reset();
  auto again = prefill->OpenForWrite("handoff");
  REQUIRE(again.ok());
  REQUIRE((*again)->Seal().ok());
  REQUIRE((*again)->Verify().ok());
}

TEST_CASE("the daemon refuses data-path writes to sealed regions and to pages of no region", "[correctness][writer][tcp]") {
  DaemonFixture daemon({.pool_size = "16MiB"});
  auto client = daemon.NewClient({.transport = "tcp"});
  // The first region of a fresh pool gets page 0; 2 layers x 1 page.
  auto sealed = MakePatternRegion(*client, "sealed", 2, 656, 300, 8, true);
  REQUIRE(sealed.ok());
  auto open = MakePatternRegion(*client, "open", 1, 656, 300, 9, false);
  REQUIRE(open.ok());
  auto stats = client->Stats();
  REQUIRE(stats.ok());
  const std::string data = daemon.Ctl("status").out;
  // The tcp-gather port, from the status output ("tcp-gather: server-side gather on HOST:PORT").
  auto at = data.find("server-side gather on ");
  REQUIRE(at != std::string::npos);
  std::string hostport = data.substr(at + 22, data.find_first_of(" \n)", at + 22) - at - 22);
  const int port = std::stoi(hostport.substr(hostport.rfind(':') + 1));
  TcpGatherTransport raw("127.0.0.1", port, 2000, 1, 0);
  std::vector<std::byte> junk(656, std::byte{0x5a});
  const int64_t page = 256 * 1024;
  // Page 0 belongs to the sealed region: refused, whole.
  auto refused = raw.Scatter(junk.data(), 656, std::vector<int64_t>{0});
  INFO(refused.ToString());
  REQUIRE(refused.code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(Has(std::string(refused.message()), "belongs to no unsealed region"));
  // A page nobody holds: refused.
  REQUIRE(raw.Scatter(junk.data(), 656, std::vector<int64_t>{50 * page}).code() ==
          absl::StatusCode::kFailedPrecondition);
  // The unsealed region's page (page 2) takes the write.
  REQUIRE(raw.Scatter(junk.data(), 656, std::vector<int64_t>{2 * page}).ok());
  REQUIRE((*sealed)->Verify().ok());
  REQUIRE(daemon.Ctl("verify sealed").exit_code == 0);
}

TEST_CASE("readers map the pool read-only: a stray store through a reader's mapping faults, the pool is intact", "[correctness][writer][shm]") {
  DaemonFixture daemon;
  // Written over tcp-gather: this process never maps the pool, so the child's mappings are its own.
  auto writer = daemon.NewClient({.transport = "tcp"});
  auto region = MakePatternRegion(*writer, "guarded", 2, 656, 300, 12, true);
  REQUIRE(region.ok());
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // A process that only reads: its pool mapping is r--s, and storing into it faults.
    auto client = Client::Connect({.server = daemon.address(), .transport = "shm"});
    if (!client.ok()) _exit(10);
    auto reader = (*client)->Open("guarded");
    if (!reader.ok() || VerifyAllLayers(**reader, 12, {0, 299}) != 0) _exit(11);
    std::ifstream maps("/proc/self/maps");
    std::string line;
    uintptr_t lo = 0;
    while (std::getline(maps, line)) {
      if (!Has(line, "sparsekv-pool")) continue;
      std::istringstream in(line);
      std::string range, perms;
      in >> range >> perms;
      if (perms != "r--s") _exit(12);
      lo = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    }
    if (lo == 0) _exit(13);
    signal(SIGSEGV, SIG_DFL);  // Catch's (and any library's) handlers would turn the fault into an exit
    signal(SIGBUS, SIG_DFL);
    *reinterpret_cast<volatile char*>(lo) = 1;  // must fault
    _exit(14);
  }
  int status = 0;
  waitpid(child, &status, 0);
  INFO("child status " << status);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE((WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS));
  REQUIRE((*region)->Verify().ok());
}

TEST_CASE("caller numbers near the limits of int64 are refused with a status, never wrap", "[correctness][overflow]") {
  DaemonFixture daemon;
  auto client = daemon.NewClient();
  auto region = client->Create({"edges", 2, 64, 10, 0});
  REQUIRE(region.ok());
  std::vector<std::byte> one(64);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  auto wrapped = (*region)->Write(0, kMax, one);  // first_token + 1 wraps: crashed before
  REQUIRE(wrapped.code() == absl::StatusCode::kOutOfRange);
  REQUIRE(Has(std::string(wrapped.message()), std::to_string(kMax)));
  REQUIRE((*region)->Write(0, kMax - 5, std::vector<std::byte>(64 * 10)).code() == absl::StatusCode::kOutOfRange);
  REQUIRE((*region)->Write(0, -1, one).code() == absl::StatusCode::kOutOfRange);
  REQUIRE((*region)->Write(1, std::numeric_limits<int64_t>::min(), one).code() == absl::StatusCode::kOutOfRange);
  REQUIRE((*region)->Append(one, kMax).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE((*region)->Append(one, kMax / 64 + 1).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE((*region)->Reserve(kMax).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE((*region)->Commit(kMax).code() == absl::StatusCode::kOutOfRange);
  REQUIRE((*region)->Commit(-1).code() == absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> idx = {std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
  std::vector<std::byte> dst(2 * 64);
  REQUIRE((*region)->Fetch(0, idx, absl::MakeSpan(dst)).code() == absl::StatusCode::kOutOfRange);
  REQUIRE((*region)->Fetch(std::numeric_limits<int32_t>::max(), {0}, absl::MakeSpan(dst)).code() ==
          absl::StatusCode::kOutOfRange);
  // The region is unharmed and still works.
  REQUIRE(WritePattern(**region, 3, 0, 10).ok());
  REQUIRE((*region)->Commit(10).ok());
  REQUIRE((*region)->Seal().ok());
  REQUIRE(VerifyAllLayers(**region, 3, {0, 9}) == 0);
}

TEST_CASE("Seal refuses when this handle wrote past the committed length, and seals exactly what was committed", "[correctness][seal]") {
  DaemonFixture daemon;
  auto client = daemon.NewClient();
  auto region = client->Create({"seal-me", 2, 656, 10, 0});
  REQUIRE(region.ok());
  REQUIRE(WritePattern(**region, 5, 0, 10).ok());
  auto refused = (*region)->Seal();  // before: sealed an empty region and said OK
  REQUIRE(refused.code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(Has(std::string(refused.message()), "wrote tokens up to 10 but only 0 are committed"));
  REQUIRE_FALSE((*region)->sealed());
  REQUIRE((*region)->Commit(10).ok());
  REQUIRE((*region)->Seal().ok());
  auto reader = client->Open("seal-me");
  REQUIRE(reader.ok());
  REQUIRE((*reader)->sealed());
  REQUIRE((*reader)->committed_tokens() == 10);
  REQUIRE(VerifyAllLayers(**reader, 5, {0, 5, 9}) == 0);
  REQUIRE((*reader)->Verify().ok());
}

TEST_CASE("a writer whose write lease lapsed and was taken by another handle stays open, read-only", "[correctness][writer]") {
  DaemonFixture daemon({.lease_ms = 600});
  auto stalled = daemon.NewClient({.renew_leases = false});  // its leases lapse after ~600 ms
  auto region = MakePatternRegion(*stalled, "lapsed-writer", 1, 64, 100, 2, false);
  REQUIRE(region.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  auto other = daemon.NewClient();
  auto taken = other->OpenForWrite("lapsed-writer");
  INFO(taken.status().ToString());
  REQUIRE(taken.ok());  // the lapsed writer no longer holds it
  // The stalled handle refreshes: it keeps reading, but it is no longer the writer.
  REQUIRE((*region)->Refresh().ok());
  REQUIRE_FALSE((*region)->writable());
  REQUIRE((*region)->Write(0, 0, std::vector<std::byte>(64)).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(VerifyAllLayers(**region, 2, {0, 99}) == 0);
  REQUIRE((*taken)->Commit(100).ok());
}
