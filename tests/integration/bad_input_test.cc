// Every kind of bad input gets its exact status code and leaves other regions intact.
#include <catch2/catch.hpp>

#include <numeric>

#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {

struct Fixture {
  DaemonFixture daemon{{.pool_size = "32MiB", .extra_args = {"--max-regions", "6"}}};
  std::shared_ptr<Region> bystander;
  std::vector<int32_t> all;
  Fixture() {
    auto r = MakePatternRegion(daemon.client(), "bystander", 3, 656, 800, 99, true);
    if (!r.ok()) throw std::runtime_error(r.status().ToString());
    bystander = *r;
    all.resize(800);
    std::iota(all.begin(), all.end(), 0);
  }
  bool BystanderIntact() {
    auto other = daemon.NewClient();
    auto fresh = other->Open("bystander");
    return fresh.ok() && VerifyAllLayers(**fresh, 99, all) == 0 && VerifyAllLayers(*bystander, 99, all) == 0;
  }
};

absl::StatusCode CreateCode(Client& c, RegionSpec spec) { return c.Create(spec).status().code(); }

}  // namespace

TEST_CASE("bad create requests get precise codes", "[bad_input][create]") {
  Fixture f;
  Client& c = f.daemon.client();
  using C = absl::StatusCode;
  REQUIRE(CreateCode(c, {"", 1, 656, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {std::string(257, 'k'), 1, 656, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"tab\there", 1, 656, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 0, 656, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 513, 656, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", -3, 656, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 1, 0, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 1, 65537, 10, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 1, 656, -1, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 1, 656, (int64_t{4} << 20) + 1, 0}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"x", 1, 656, 10, -5}) == C::kInvalidArgument);
  REQUIRE(CreateCode(c, {"bystander", 1, 656, 10, 0}) == C::kAlreadyExists);
  // Larger than the whole pool.
  auto huge = c.Create({"huge", 61, 656, 131072, 0});
  REQUIRE(huge.status().code() == C::kResourceExhausted);
  REQUIRE(std::string(huge.status().message()).find("more than the whole pool") != std::string::npos);
  // The message names the value.
  auto layers = c.Create({"x", 9999, 656, 10, 0});
  REQUIRE(std::string(layers.status().message()).find("9999") != std::string::npos);
  REQUIRE(f.BystanderIntact());
}

TEST_CASE("unknown regions are NOT_FOUND for open, delete and the CLI", "[bad_input][not_found]") {
  Fixture f;
  REQUIRE(f.daemon.client().Open("nope").status().code() == absl::StatusCode::kNotFound);
  REQUIRE(f.daemon.client().Delete("nope").code() == absl::StatusCode::kNotFound);
  auto ctl = f.daemon.Ctl("region nope");
  REQUIRE(ctl.exit_code == 1);
  REQUIRE(ctl.err.find("NOT_FOUND") != std::string::npos);
  REQUIRE(f.BystanderIntact());
}

TEST_CASE("bad fetches are refused before any byte is written", "[bad_input][fetch]") {
  Fixture f;
  Region& r = *f.bystander;
  std::vector<std::byte> dst(4 * 656, std::byte{0x77});
  auto untouched = [&] { return std::all_of(dst.begin(), dst.end(), [](std::byte b) { return b == std::byte{0x77}; }); };
  using C = absl::StatusCode;
  std::vector<int32_t> past = {1, 2, 800, 3};
  auto s = r.Fetch(0, past, absl::MakeSpan(dst));
  REQUIRE(s.code() == C::kOutOfRange);
  REQUIRE(std::string(s.message()).find("token 800 (position 2) of layer 0 is past the committed length 800") != std::string::npos);
  REQUIRE(untouched());
  std::vector<int32_t> negative = {1, -7};
  REQUIRE(r.Fetch(0, negative, absl::MakeSpan(dst)).code() == C::kOutOfRange);
  REQUIRE(untouched());
  std::vector<int32_t> ok = {1, 2};
  REQUIRE(r.Fetch(3, ok, absl::MakeSpan(dst)).code() == C::kOutOfRange);
  REQUIRE(r.Fetch(-1, ok, absl::MakeSpan(dst)).code() == C::kOutOfRange);
  REQUIRE(untouched());
  REQUIRE(r.Fetch(0, ok, absl::MakeSpan(dst.data(), 656 * 2 - 1)).code() == C::kInvalidArgument);
  REQUIRE(untouched());
  // An empty index list is a valid no-op.
  REQUIRE(r.Fetch(0, {}, absl::MakeSpan(dst)).ok());
  REQUIRE(untouched());
  // Batch items: no region, too small a destination.
  FetchItem no_region{nullptr, 0, ok, absl::MakeSpan(dst)};
  REQUIRE(f.daemon.client().FetchBatch({&no_region, 1}).code() == C::kInvalidArgument);
  FetchItem small{&r, 0, ok, absl::MakeSpan(dst.data(), 10)};
  REQUIRE(f.daemon.client().FetchBatch({&small, 1}).code() == C::kInvalidArgument);
  REQUIRE(untouched());
  REQUIRE(f.BystanderIntact());
}

TEST_CASE("bad writes, commits and extends get precise codes", "[bad_input][write]") {
  Fixture f;
  Client& c = f.daemon.client();
  auto r = c.Create({"w", 2, 656, 100, 0});
  REQUIRE(r.ok());
  Region& w = **r;
  using C = absl::StatusCode;
  std::vector<std::byte> one(656), odd(700);
  REQUIRE(w.Write(0, 100, one).code() == C::kOutOfRange);           // past capacity
  REQUIRE(w.Write(0, -1, one).code() == C::kOutOfRange);
  REQUIRE(w.Write(2, 0, one).code() == C::kOutOfRange);             // no such layer
  REQUIRE(w.Write(0, 0, odd).code() == C::kInvalidArgument);        // not whole entries
  REQUIRE(w.Commit(101).code() == C::kOutOfRange);                  // past capacity
  REQUIRE(w.Commit(50).ok());
  REQUIRE(w.Commit(10).code() == C::kInvalidArgument);              // shrinking
  REQUIRE(w.Append(one, 1).code() == C::kInvalidArgument);          // needs 2 layers' worth
  REQUIRE(w.Append({}, 0).code() == C::kInvalidArgument);
  REQUIRE(w.Reserve((int64_t{4} << 20) + 1).code() == C::kInvalidArgument);
  REQUIRE(w.Seal().ok());
  REQUIRE(w.Write(0, 0, one).code() == C::kFailedPrecondition);
  REQUIRE(w.Commit(60).code() == C::kFailedPrecondition);
  REQUIRE(w.Reserve(1000).code() == C::kFailedPrecondition);
  REQUIRE(f.BystanderIntact());
}

TEST_CASE("exhausted memory and region limits are RESOURCE_EXHAUSTED and harm nobody", "[bad_input][exhausted]") {
  Fixture f;
  Client& c = f.daemon.client();
  // 32 MiB = 128 pages; bystander holds 3 x 3 = 9. Hold the rest with leased regions.
  auto big = c.Create({"big", 1, 656, 372 * 110, 0});
  REQUIRE(big.ok());
  auto full = c.Create({"one-more", 1, 656, 372 * 10, 0});
  REQUIRE(full.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(std::string(full.status().message()).find("pool exhausted") != std::string::npos);
  // Growing past the pool is refused too, and the region keeps what it had.
  REQUIRE((*big)->Reserve(372 * 200).code() == absl::StatusCode::kResourceExhausted);
  REQUIRE((*big)->capacity_tokens() == 372 * 110);
  // --max-regions 6: bystander + big + 4 more.
  std::vector<std::shared_ptr<Region>> small;
  for (int i = 0; i < 4; ++i) {
    auto s = c.Create({"s" + std::to_string(i), 1, 64, 0, 0});
    REQUIRE(s.ok());
    small.push_back(*s);
  }
  REQUIRE(c.Create({"s4", 1, 64, 0, 0}).status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(f.BystanderIntact());
}

TEST_CASE("a client of an unreachable daemon gets UNAVAILABLE quickly", "[bad_input][unavailable]") {
  ClientOptions options;
  options.server = "127.0.0.1:1";
  options.rpc_timeout_ms = 300;
  auto client = Client::Connect(options);
  REQUIRE(client.status().code() == absl::StatusCode::kUnavailable);
  REQUIRE(std::string(client.status().message()).find("127.0.0.1:1") != std::string::npos);
}

TEST_CASE("a dead daemon turns control calls into UNAVAILABLE, not hangs", "[bad_input][unavailable]") {
  DaemonFixture daemon;
  auto client = daemon.NewClient({.rpc_timeout_ms = 1000});
  auto region = MakePatternRegion(*client, "r", 1, 656, 10, 1, false);
  REQUIRE(region.ok());
  daemon.Kill();
  auto s = (*region)->Commit(10);
  REQUIRE((s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded));
  REQUIRE(client->Open("r").status().code() != absl::StatusCode::kOk);
}
