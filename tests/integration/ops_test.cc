// Operating the daemon: metrics, drain, config, reload, systemd notifications.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <thread>

#include "tests/support/daemon_fixture.h"
#include "tests/support/notify_socket.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {

bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The value of one sample line ("name{labels} value") of a Prometheus exposition, or -1.
double Sample(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::atof(text.c_str() + at + series.size() + 1);
    at += series.size();
  }
  return -1;
}

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

TEST_CASE("the /metrics endpoint serves Prometheus text whose figures move with operations", "[ops][metrics]") {
  DaemonFixture daemon({.pool_size = "64MiB", .lease_ms = 400});
  REQUIRE(daemon.metrics_port() > 0);
  auto [status, before] = HttpGet(daemon.metrics_port(), "/metrics");
  REQUIRE(status == 200);
  REQUIRE(Has(before, "# TYPE sparsekv_pool_bytes gauge"));
  REQUIRE(Sample(before, "sparsekv_pool_bytes{tenant=\"default\"}") == 64.0 * (1 << 20));
  REQUIRE(Sample(before, "sparsekv_regions{tenant=\"default\"}") == 0);
  REQUIRE(HttpGet(daemon.metrics_port(), "/").first == 404);

  auto region = MakePatternRegion(daemon.client(), "m", 2, 656, 1000, 1, true);
  REQUIRE(region.ok());
  std::vector<int32_t> idx(300);
  for (int i = 0; i < 300; ++i) idx[i] = i * 3;
  REQUIRE(VerifyAllLayers(**region, 1, idx) == 0);  // 2 fetches of 300 entries
  REQUIRE(daemon.client().Open("absent").status().code() == absl::StatusCode::kNotFound);
  SleepMs(400);  // a renewal carries the client's data-plane counters

  auto after = HttpGet(daemon.metrics_port(), "/metrics").second;
  REQUIRE(Sample(after, "sparsekv_regions{tenant=\"default\"}") == 1);
  REQUIRE(Sample(after, "sparsekv_pool_used_bytes{tenant=\"default\"}") == 2 * 3 * 256 * 1024);
  REQUIRE(Sample(after, "sparsekv_leases{tenant=\"default\"}") == 1);
  REQUIRE(Sample(after, "sparsekv_fetched_entries_total{transport=\"shm\"}") >= 600);
  REQUIRE(Sample(after, "sparsekv_fetched_bytes_total{transport=\"shm\"}") >= 600 * 656);
  REQUIRE(Sample(after, "sparsekv_written_bytes_total{transport=\"shm\"}") == 2 * 1000 * 656);
  REQUIRE(Sample(after, "sparsekv_rpc_duration_seconds_count{method=\"CreateRegion\"}") == 1);
  REQUIRE(Sample(after, "sparsekv_rpc_duration_seconds_bucket{method=\"CreateRegion\",le=\"+Inf\"}") == 1);
  REQUIRE(Sample(after, "sparsekv_rpc_duration_seconds_count{method=\"RenewLeases\"}") >= 1);
  REQUIRE(Sample(after, "sparsekv_rpc_errors_total{method=\"OpenRegion\",code=\"NOT_FOUND\"}") == 1);
  REQUIRE(Sample(after, "sparsekv_region_creates_total") == 1);

  // The same text through the CLI, and as JSON.
  auto ctl = daemon.Ctl("metrics");
  REQUIRE(ctl.exit_code == 0);
  REQUIRE(Has(ctl.out, "sparsekv_regions{tenant=\"default\"} 1"));
  auto json = daemon.Ctl("metrics --json");
  REQUIRE(json.exit_code == 0);
  REQUIRE(Has(json.out, "\"sparsekv_regions{tenant=\\\"default\\\"}\":1"));
}

TEST_CASE("drain refuses new regions and keeps existing ones readable: --off undoes it", "[ops][drain]") {
  DaemonFixture daemon;
  auto region = MakePatternRegion(daemon.client(), "kept", 2, 656, 500, 4, true);
  REQUIRE(region.ok());
  auto drained = daemon.Ctl("drain --json");
  REQUIRE(drained.exit_code == 0);
  REQUIRE(Has(drained.out, "\"draining\":true"));
  REQUIRE(Has(daemon.Ctl("status --json").out, "\"draining\":true"));
  auto refused = daemon.client().Create({"new", 1, 656, 10, 0});
  REQUIRE(refused.status().code() == absl::StatusCode::kUnavailable);
  REQUIRE(Has(std::string(refused.status().message()), "draining"));
  std::vector<int32_t> idx = {0, 499, 250};
  REQUIRE(VerifyAllLayers(**region, 4, idx) == 0);
  REQUIRE(daemon.client().Open("kept").ok());
  REQUIRE(daemon.Ctl("drain --off").exit_code == 0);
  REQUIRE(daemon.client().Create({"new", 1, 656, 10, 0}).ok());
  REQUIRE(daemon.Ctl("drain --bogus").exit_code == 2);
}

TEST_CASE("sparsekvctl config and tenants show the effective setup", "[ops][ctl]") {
  DaemonFixture daemon({.lease_ms = 2500});
  auto config = daemon.Ctl("config");
  REQUIRE(config.exit_code == 0);
  REQUIRE(Has(config.out, "lease_ms = 2500"));
  REQUIRE(Has(config.out, "[limits]"));
  REQUIRE(Has(daemon.Ctl("config --json").out, "\"toml\":\"[pool]\\n"));
  auto region = MakePatternRegion(daemon.client(), "t", 1, 656, 372, 1, true);
  auto tenants = daemon.Ctl("tenants --json");
  REQUIRE(tenants.exit_code == 0);
  REQUIRE(Has(tenants.out, "{\"name\":\"default\",\"used_bytes\":262144,\"regions\":1"));
}

TEST_CASE("SIGHUP reloads what can change at run time and names what needs a restart", "[ops][reload]") {
  TempDir dir;
  std::string path = dir.path() + "/sparsekvd.toml";
  std::ofstream(path) << "[leases]\nlease_ms = 2000\n[limits]\nmax_regions = 10\n";
  DaemonFixture daemon({.pool_size = "64MiB", .lease_ms = 2000, .config_file = path});
  // The fixture's own --lease-ms flag wins over the file; the file's limits apply.
  REQUIRE(Has(daemon.Ctl("config").out, "max_regions = 10"));
  std::ofstream(path) << "[pool]\npage_size = \"512KiB\"\n[leases]\nlease_ms = 2000\n[limits]\nmax_regions = 3\nmax_layers = 7\n[log]\nlevel = \"debug\"\n";
  kill(daemon.pid(), SIGHUP);
  SleepMs(300);
  auto config = daemon.Ctl("config").out;
  REQUIRE(Has(config, "max_regions = 3"));
  REQUIRE(Has(config, "max_layers = 7"));
  REQUIRE(daemon.client().Create({"x", 8, 656, 10, 0}).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(Has(daemon.Log(), "need a restart: pool.page_size"));
  // A broken file is refused and the running config stays.
  std::ofstream(path) << "[limits]\nmax_regions = \"many\"\n";
  kill(daemon.pid(), SIGHUP);
  SleepMs(300);
  REQUIRE(Has(daemon.Log(), "config not reloaded"));
  REQUIRE(Has(daemon.Ctl("config").out, "max_regions = 3"));
  REQUIRE(daemon.Ctl("status").exit_code == 0);
}

TEST_CASE("under systemd the daemon notifies READY, STATUS, RELOADING, STOPPING and feeds the watchdog", "[ops][systemd]") {
  TempDir dir;
  NotifySocket notify(dir.path() + "/notify");
  DaemonFixture daemon({.env = {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=400000", "WATCHDOG_PID=self"}});
  notify.Receive(800);
  const std::string& received = notify.received();
  REQUIRE(Has(received, "STATUS=reserving"));
  REQUIRE(Has(received, "READY=1"));
  REQUIRE(Has(received, "STATUS=serving"));
  size_t watchdogs = 0;
  for (size_t at = 0; (at = received.find("WATCHDOG=1", at)) != std::string::npos; ++at) ++watchdogs;
  REQUIRE(watchdogs >= 3);
  kill(daemon.pid(), SIGHUP);
  REQUIRE(notify.ReceiveUntil("RELOADING=1", 2000));
  REQUIRE(daemon.Stop() == 0);
  REQUIRE(notify.ReceiveUntil("STOPPING=1", 2000));
}
