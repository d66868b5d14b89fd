// End-to-end test of the native verbs transport. It needs an RDMA device (a NIC, or Soft-RoCE)
// and an IPv4 address on it in SPARSEKV_RDMA_ADDR; without them it says so and exits 77, which
// ctest reports as skipped. It never reports a pass it did not earn.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "common/rdma_devices.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {
std::string RdmaAddress() {
  const char* a = std::getenv("SPARSEKV_RDMA_ADDR");
  return a == nullptr ? "" : a;
}
}  // namespace

TEST_CASE("over verbs: fetches and writes are byte-exact and bad indices are refused", "[verbs]") {
  DaemonFixture daemon({.extra_args = {"--verbs", "on", "--data-listen", RdmaAddress() + ":0"}});
  auto client = daemon.NewClient({.transport = "verbs"});
  auto region = MakePatternRegion(*client, "verbs-a", 4, 656, 3000, 8, true);
  REQUIRE(region.ok());
  REQUIRE((*region)->transport_name() == "verbs");
  std::mt19937 rng(3);
  std::vector<int32_t> idx(2048);
  for (auto& t : idx) t = static_cast<int32_t>(rng() % 3000);
  REQUIRE(VerifyAllLayers(**region, 8, idx) == 0);
  std::vector<std::byte> registered(idx.size() * 656);
  REQUIRE(client->RegisterBuffer(registered.data(), registered.size()).ok());
  REQUIRE((*region)->Fetch(1, idx, absl::MakeSpan(registered)).ok());
  REQUIRE(CountWrong(8, 1, idx, 656, registered) == 0);
  REQUIRE((*region)->Verify().ok());
  std::vector<int32_t> past = {3000};
  REQUIRE((*region)->Fetch(0, past, absl::MakeSpan(registered)).code() == absl::StatusCode::kOutOfRange);
}

int main(int argc, char** argv) {
  if (RdmaDevices().empty()) {
    std::printf("SKIPPED: no RDMA device (ibv_get_device_list found none); the verbs end-to-end test did not run\n");
    return 77;
  }
  if (RdmaAddress().empty()) {
    std::printf("SKIPPED: an RDMA device exists (%s) but SPARSEKV_RDMA_ADDR, an IPv4 address on it, is not set\n",
                RdmaDevices().front().c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
