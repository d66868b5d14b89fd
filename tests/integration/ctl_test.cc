// sparsekvctl against the real daemon: tables, --json, and exit codes scripts rely on.
#include <catch2/catch.hpp>

#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {
bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("sparsekvctl status --json reports the pool and moves with operations", "[ctl]") {
  DaemonFixture daemon({.pool_size = "64MiB"});
  auto before = daemon.Ctl("status --json");
  REQUIRE(before.exit_code == 0);
  REQUIRE(Has(before.out, "\"pool_bytes\":67108864"));
  REQUIRE(Has(before.out, "\"used_bytes\":0,"));
  REQUIRE(Has(before.out, "\"free_bytes\":67108864"));
  REQUIRE(Has(before.out, "\"regions\":0,"));
  REQUIRE(Has(before.out, "\"backing\":\"memfd\""));
  auto region = MakePatternRegion(daemon.client(), "ctl-a", 2, 656, 372, 1, true);
  REQUIRE(region.ok());
  auto after = daemon.Ctl("status --json");
  REQUIRE(Has(after.out, "\"used_bytes\":524288,"));  // 2 layers x 1 page of 256 KiB
  REQUIRE(Has(after.out, "\"regions\":1,"));
  REQUIRE(Has(after.out, "\"active_leases\":1,"));
  auto human = daemon.Ctl("status");
  REQUIRE(human.exit_code == 0);
  REQUIRE(Has(human.out, "64.00 MiB"));
  REQUIRE(Has(human.out, "regions       1 (1 sealed)"));
}

TEST_CASE("sparsekvctl lists, describes, deletes and evicts regions", "[ctl]") {
  DaemonFixture daemon;
  auto a = MakePatternRegion(daemon.client(), "req-1", 2, 656, 100, 1, true);
  auto b = MakePatternRegion(daemon.client(), "req-2", 2, 656, 100, 2, true);
  auto other = MakePatternRegion(daemon.client(), "other", 1, 132, 100, 3, false);
  REQUIRE((a.ok() && b.ok() && other.ok()));
  auto list = daemon.Ctl("regions");
  REQUIRE(list.exit_code == 0);
  REQUIRE(Has(list.out, "req-1"));
  REQUIRE(Has(list.out, "3 region(s)"));
  auto prefixed = daemon.Ctl("--json regions req-");
  REQUIRE(Has(prefixed.out, "\"key\":\"req-1\""));
  REQUIRE_FALSE(Has(prefixed.out, "\"other\""));

  auto one = daemon.Ctl("region req-2 --json");
  REQUIRE(one.exit_code == 0);
  REQUIRE(Has(one.out, "\"committed_tokens\":100"));
  REQUIRE(Has(one.out, "\"entry_stride_bytes\":704"));
  REQUIRE(Has(one.out, "\"sealed\":true"));

  // Leased regions are not evicted: nothing to evict yet.
  auto none = daemon.Ctl("evict --bytes 1MiB --json");
  REQUIRE(none.exit_code == 1);
  REQUIRE(Has(none.out, "\"evicted_bytes\":0"));
  a->reset();
  auto evicted = daemon.Ctl("evict --bytes 1");
  REQUIRE(evicted.exit_code == 0);
  REQUIRE(Has(evicted.out, "req-1"));
  REQUIRE(daemon.client().Open("req-1").status().code() == absl::StatusCode::kNotFound);

  auto deleted = daemon.Ctl("delete other");
  REQUIRE(deleted.exit_code == 0);
  REQUIRE(Has(deleted.out, "deleted 'other'"));
  REQUIRE(daemon.Ctl("delete other").exit_code == 1);
}

TEST_CASE("sparsekvctl exit codes: 2 for usage, 3 for an unreachable daemon", "[ctl]") {
  DaemonFixture daemon;
  REQUIRE(daemon.Ctl("").exit_code == 2);
  REQUIRE(daemon.Ctl("frobnicate").exit_code == 2);
  REQUIRE(daemon.Ctl("region").exit_code == 2);
  REQUIRE(daemon.Ctl("evict --bytes lots").exit_code == 2);
  REQUIRE(RunCommand(SparsekvctlPath() + " --help").exit_code == 0);
  auto dead = RunCommand(SparsekvctlPath() + " --server 127.0.0.1:1 --timeout-ms 300 status --json");
  REQUIRE(dead.exit_code == 3);
  REQUIRE(Has(dead.err, "unreachable"));
  // Over the Unix socket too.
  auto unix_status = RunCommand(SparsekvctlPath() + " --server " + daemon.unix_address() + " status");
  REQUIRE(unix_status.exit_code == 0);
}
