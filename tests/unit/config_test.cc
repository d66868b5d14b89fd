#include <catch2/catch.hpp>

#include <fstream>

#include "common/config.h"
#include "tests/support/daemon_fixture.h"

using namespace sparsekv;

namespace {
std::string WriteConfig(const testing::TempDir& dir, const std::string& text) {
  std::string path = dir.path() + "/sparsekvd.toml";
  std::ofstream(path) << text;
  return path;
}
absl::StatusOr<DaemonConfig> Parse(std::vector<std::string> args) {
  bool help = false;
  return ParseDaemonArgs(args, &help);
}
}  // namespace

TEST_CASE("defaults are sane without a config file", "[config]") {
  auto c = Parse({});
  REQUIRE(c.ok());
  REQUIRE(c->backing == "memfd");
  REQUIRE(c->listen == "127.0.0.1:7370");
  REQUIRE(c->pool_bytes == 0);  // sized at start-up
  REQUIRE(c->page_bytes == 256 * 1024);
}

TEST_CASE("flags override the config file wherever --config stands", "[config]") {
  testing::TempDir dir;
  auto path = WriteConfig(dir, R"(
[pool]
size = "1GiB"
backing = "memfd"
page_size = "512KiB"
[listen]
tcp = "127.0.0.1:9000"
[leases]
lease_ms = 3000
[limits]
max_regions = 10
)");
  auto c = Parse({"--pool-size", "2GiB", "--config", path});
  REQUIRE(c.ok());
  REQUIRE(c->pool_bytes == 2LL << 30);        // flag wins
  REQUIRE(c->page_bytes == 512 * 1024);       // from the file
  REQUIRE(c->listen == "127.0.0.1:9000");
  REQUIRE(c->lease_ms == 3000);
  REQUIRE(c->limits.max_regions == 10);
  REQUIRE(c->config_file == path);
}

TEST_CASE("unknown keys and bad values name the key", "[config]") {
  testing::TempDir dir;
  auto unknown = Parse({"--config", WriteConfig(dir, "[pool]\nsise = \"1GiB\"\n")});
  REQUIRE(unknown.status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(std::string(unknown.status().message()).find("pool.sise") != std::string::npos);

  auto bad_size = Parse({"--config", WriteConfig(dir, "[pool]\nsize = \"lots\"\n")});
  REQUIRE(std::string(bad_size.status().message()).find("pool.size") != std::string::npos);

  auto syntax = Parse({"--config", WriteConfig(dir, "[pool\nsize=1\n")});
  REQUIRE(syntax.status().code() == absl::StatusCode::kInvalidArgument);

  auto missing = Parse({"--config", dir.path() + "/nope.toml"});
  REQUIRE_FALSE(missing.ok());

  auto flag = Parse({"--pool-sise", "1GiB"});
  REQUIRE(std::string(flag.status().message()).find("--pool-sise") != std::string::npos);

  auto lease = Parse({"--lease-ms", "5"});
  REQUIRE(std::string(lease.status().message()).find("leases.lease_ms") != std::string::npos);

  auto page = Parse({"--page-size", "1000"});
  REQUIRE(std::string(page.status().message()).find("page_size") != std::string::npos);

  auto no_value = Parse({"--pool-size"});
  REQUIRE(no_value.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("--help is recognised and the usage lists every option", "[config]") {
  bool help = false;
  REQUIRE(ParseDaemonArgs({"--pool-size", "1GiB", "--help"}, &help).ok());
  REQUIRE(help);
  std::string usage = DaemonUsage();
  for (const char* flag : {"--listen", "--pool-size", "--config", "--backing", "--page-size", "--lease-ms",
                           "--runtime-dir", "--check-config"}) {
    INFO(flag);
    REQUIRE(usage.find(flag) != std::string::npos);
  }
}
