#include <catch2/catch.hpp>

#include "common/geometry.h"
#include "common/size_parse.h"

using namespace sparsekv;

TEST_CASE("sizes parse with binary and decimal units", "[size]") {
  REQUIRE(*ParseSize("512MiB") == 512LL << 20);
  REQUIRE(*ParseSize("4GiB") == 4LL << 30);
  REQUIRE(*ParseSize("4g") == 4LL << 30);
  REQUIRE(*ParseSize("256k") == 256LL << 10);
  REQUIRE(*ParseSize("1048576") == 1048576);
  REQUIRE(*ParseSize(" 2 TiB ") == 2LL << 40);
  REQUIRE(*ParseSize("1GB") == 1000000000LL);
  REQUIRE(*ParseSize("0") == 0);
}

TEST_CASE("bad sizes are errors that quote the text", "[size]") {
  for (const char* bad : {"", "MiB", "-1GiB", "12 parsecs", "1.5GiB", "99999999999999999999"}) {
    auto parsed = ParseSize(bad);
    INFO(bad);
    REQUIRE_FALSE(parsed.ok());
    REQUIRE(parsed.status().code() == absl::StatusCode::kInvalidArgument);
  }
  REQUIRE(std::string(ParseSize("12 parsecs").status().message()).find("'12 parsecs'") != std::string::npos);
  REQUIRE_FALSE(ParseSize("9000000TiB").ok());  // overflows int64
}

TEST_CASE("FormatBytes picks a readable unit", "[size]") {
  REQUIRE(FormatBytes(656) == "656 B");
  REQUIRE(FormatBytes(1536) == "1.50 KiB");
  REQUIRE(FormatBytes(4LL << 30) == "4.00 GiB");
}

TEST_CASE("geometry pads entries to whole cache lines", "[geometry]") {
  auto g = MakeGeometry(61, 656, 256 * 1024);
  REQUIRE(g.ok());
  REQUIRE(g->entry_stride_bytes == 704);
  REQUIRE(g->tokens_per_page == 262144 / 704);
  REQUIRE(MakeGeometry(1, 132, 4096)->entry_stride_bytes == 192);
  REQUIRE(MakeGeometry(1, 64, 4096)->entry_stride_bytes == 64);
  REQUIRE(MakeGeometry(1, 65, 4096)->entry_stride_bytes == 128);
  REQUIRE(g->PagesPerLayer(0) == 0);
  REQUIRE(g->PagesPerLayer(372) == 1);
  REQUIRE(g->PagesPerLayer(373) == 2);
  REQUIRE(MakeGeometry(0, 656, 4096).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(MakeGeometry(1, 0, 4096).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(MakeGeometry(1, 5000, 4096).status().code() == absl::StatusCode::kInvalidArgument);
}
