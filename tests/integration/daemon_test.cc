// Starting and stopping the real sparsekvd: flags, config file, backings, signals.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "common/rdma_devices.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {
bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

CommandResult Daemon(const std::string& args, const TempDir& dir) {
  return RunCommand(SparsekvdPath() + " --listen 127.0.0.1:0 --runtime-dir " + dir.path() + " " + args);
}
}  // namespace

TEST_CASE("sparsekvd --help lists every option and exits 0", "[daemon]") {
  auto help = RunCommand(SparsekvdPath() + " --help");
  REQUIRE(help.exit_code == 0);
  for (const char* flag : {"--listen", "--pool-size", "--config", "--backing", "--lease-ms", "--check-config"}) {
    REQUIRE(Has(help.out, flag));
  }
}

TEST_CASE("bad flags and config are refused at start-up with the key named", "[daemon]") {
  TempDir dir;
  auto bad_size = Daemon("--pool-size 12parsecs", dir);
  REQUIRE(bad_size.exit_code == 2);
  REQUIRE(Has(bad_size.err, "--pool-size"));
  auto unknown = Daemon("--frobnicate 1", dir);
  REQUIRE(unknown.exit_code == 2);
  REQUIRE(Has(unknown.err, "--frobnicate"));
  std::string config = dir.path() + "/bad.toml";
  std::ofstream(config) << "[pool]\nsize = \"64MiB\"\ncolour = \"blue\"\n";
  auto bad_key = Daemon("--config " + config, dir);
  REQUIRE(bad_key.exit_code == 2);
  REQUIRE(Has(bad_key.err, "pool.colour"));
  auto backing = Daemon("--backing floppy:/dev/fd0", dir);
  REQUIRE(backing.exit_code == 2);
  REQUIRE(Has(backing.err, "floppy"));
}

TEST_CASE("check-config prints the effective config with flags over the file", "[daemon]") {
  TempDir dir;
  std::string config = dir.path() + "/ok.toml";
  std::ofstream(config) << "[pool]\nsize = \"1GiB\"\n[leases]\nlease_ms = 2500\n";
  auto checked = RunCommand(SparsekvdPath() + " --config " + config + " --pool-size 2GiB --check-config");
  REQUIRE(checked.exit_code == 0);
  REQUIRE(Has(checked.out, "size = \"2147483648\""));
  REQUIRE(Has(checked.out, "lease_ms = 2500"));
}

TEST_CASE("a backing that cannot be had stops start-up with a clear error and no ready file", "[daemon][backing]") {
  TempDir dir;
  std::string ready = dir.path() + "/ready";
  auto devdax = Daemon("--pool-size 64MiB --backing devdax:/dev/dax-none.0 --ready-file " + ready, dir);
  REQUIRE(devdax.exit_code == 1);
  REQUIRE(Has(devdax.err, "/dev/dax-none.0"));
  auto numa = Daemon("--pool-size 64MiB --backing numa:999 --ready-file " + ready, dir);
  REQUIRE(numa.exit_code == 1);
  REQUIRE(Has(numa.err, "999"));
  auto hugetlb = Daemon("--pool-size 64MiB --backing hugetlbfs:" + dir.path() + "/pool --ready-file " + ready, dir);
  REQUIRE(hugetlb.exit_code == 1);
  REQUIRE(Has(hugetlb.err, "not on a hugetlbfs mount"));
  if (std::ifstream("/proc/meminfo").good()) {
    auto huge = Daemon("--pool-size 64TiB --backing memfd-hugetlb --ready-file " + ready, dir);
    REQUIRE(huge.exit_code == 1);
    REQUIRE(Has(huge.err, "vm.nr_hugepages"));
  }
  auto too_big = Daemon("--pool-size 64TiB --ready-file " + ready, dir);
  REQUIRE(too_big.exit_code == 1);
  REQUIRE(Has(too_big.err, "pool"));
  REQUIRE_FALSE(std::filesystem::exists(ready));
  // Port already taken.
  DaemonFixture first;
  auto clash = RunCommand(SparsekvdPath() + " --pool-size 64MiB --listen " + first.address() +
                          " --runtime-dir " + dir.path() + " --ready-file " + ready);
  REQUIRE(clash.exit_code == 1);
  REQUIRE(Has(clash.err, "cannot listen"));
  REQUIRE_FALSE(std::filesystem::exists(ready));
}

TEST_CASE("a file-backed pool (tmpfs, as for emulated CXL memory) serves regions through its path", "[daemon][backing]") {
  TempDir pool_dir;
  std::string path = pool_dir.path() + "/pool";
  DaemonFixture daemon({.pool_size = "32MiB", .extra_args = {"--backing", "file:" + path}});
  REQUIRE(std::filesystem::file_size(path) == 32u << 20);
  auto region = MakePatternRegion(daemon.client(), "file-backed", 3, 656, 1000, 4, true);
  REQUIRE(region.ok());
  std::vector<int32_t> idx = {0, 999, 371, 372, 500};
  REQUIRE(VerifyAllLayers(**region, 4, idx) == 0);
  REQUIRE(Has(daemon.Ctl("status").out, "file:" + path));
}

TEST_CASE("a NUMA-node backing binds the pool to that node", "[daemon][backing]") {
  DaemonFixture daemon({.pool_size = "32MiB", .extra_args = {"--backing", "numa:0"}});
  auto region = MakePatternRegion(daemon.client(), "numa", 2, 656, 500, 6, true);
  REQUIRE(region.ok());
  std::vector<int32_t> idx = {0, 499, 250};
  REQUIRE(VerifyAllLayers(**region, 6, idx) == 0);
  REQUIRE(Has(daemon.Ctl("status").out, "numa:0"));
}

TEST_CASE("SIGTERM stops the daemon cleanly and removes its sockets", "[daemon]") {
  DaemonFixture daemon;
  auto region = MakePatternRegion(daemon.client(), "r", 1, 656, 10, 1, true);
  REQUIRE(region.ok());
  REQUIRE(std::filesystem::exists(daemon.runtime_dir() + "/pool.sock"));
  region->reset();
  REQUIRE(daemon.Stop() == 0);
  REQUIRE(Has(daemon.Log(), "stopped cleanly"));
  REQUIRE_FALSE(std::filesystem::exists(daemon.runtime_dir() + "/pool.sock"));
  REQUIRE_FALSE(std::filesystem::exists(daemon.runtime_dir() + "/control.sock"));
}

TEST_CASE("a data-plane transport asked for by name that cannot be had stops start-up", "[daemon][fabric]") {
  TempDir dir;
  auto fabric = Daemon("--pool-size 64MiB --fabric-provider no-such-provider", dir);
  REQUIRE(fabric.exit_code == 1);
  REQUIRE(Has(fabric.err, "no provider 'no-such-provider'"));
  if (RdmaDevices().empty()) {  // with a device, --verbs on is satisfiable and the daemon would run
    auto verbs = Daemon("--pool-size 64MiB --verbs on", dir);
    REQUIRE(verbs.exit_code == 1);
    REQUIRE(Has(verbs.err, "no RDMA device"));
  }
  auto bad = Daemon("--pool-size 64MiB --verbs sometimes", dir);
  REQUIRE(bad.exit_code == 2);
  REQUIRE(Has(bad.err, "transports.verbs"));
}
