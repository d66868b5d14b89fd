#include <catch2/catch.hpp>

#include <vector>

#include "client/fetch_planner.h"
#include "client/transports/shm_transport.h"
#include "common/entry_pattern.h"

using namespace sparsekv;

namespace {
struct Layout {
  std::string key = "seq-1";
  std::vector<std::vector<uint32_t>> pages;
  RegionLayout view;
  Layout(int layers, int pages_per_layer, int32_t entry_bytes, int64_t page_bytes) {
    uint32_t next = 0;
    pages.resize(layers);
    // Interleave layers so a layer's pages are not contiguous in the pool.
    for (int p = 0; p < pages_per_layer; ++p)
      for (int l = 0; l < layers; ++l) pages[l].push_back(next++);
    view.key = &key;
    view.geometry = *MakeGeometry(layers, entry_bytes, page_bytes);
    view.pages = &pages;
  }
};
}  // namespace

TEST_CASE("indices resolve to page + offset, across page boundaries and layers", "[planner]") {
  Layout L(3, 4, 656, 4096);  // 704-byte stride, 5 tokens per 4 KiB page
  REQUIRE(L.view.geometry.tokens_per_page == 5);
  std::vector<int32_t> idx = {0, 4, 5, 19, 7};
  std::vector<int64_t> off(idx.size());
  REQUIRE(ResolveTopK(L.view, 2, idx, 20, absl::MakeSpan(off)).ok());
  // layer 2's pages are 2, 5, 8, 11
  REQUIRE(off[0] == 2 * 4096 + 0);
  REQUIRE(off[1] == 2 * 4096 + 4 * 704);
  REQUIRE(off[2] == 5 * 4096 + 0);
  REQUIRE(off[3] == 11 * 4096 + 4 * 704);
  REQUIRE(off[4] == 5 * 4096 + 2 * 704);
}

TEST_CASE("an index at or past the committed length is OUT_OF_RANGE and names it", "[planner]") {
  Layout L(2, 4, 656, 4096);
  std::vector<int64_t> off(3);
  std::vector<int32_t> idx = {1, 12, 2};
  auto s = ResolveTopK(L.view, 0, idx, 12, absl::MakeSpan(off));
  REQUIRE(s.code() == absl::StatusCode::kOutOfRange);
  REQUIRE(std::string(s.message()).find("token 12 (position 1)") != std::string::npos);
  REQUIRE(std::string(s.message()).find("committed length 12") != std::string::npos);

  std::vector<int32_t> neg = {-1};
  REQUIRE(ResolveTopK(L.view, 0, neg, 12, absl::MakeSpan(off)).code() == absl::StatusCode::kOutOfRange);
  REQUIRE(ResolveTopK(L.view, 2, {}, 12, absl::MakeSpan(off)).code() == absl::StatusCode::kOutOfRange);
  REQUIRE(ResolveTopK(L.view, -1, {}, 12, absl::MakeSpan(off)).code() == absl::StatusCode::kOutOfRange);
  // Committed past what the page table covers: still refused, never read outside the table.
  std::vector<int32_t> beyond = {20};
  REQUIRE(ResolveTopK(L.view, 0, beyond, 100, absl::MakeSpan(off)).code() == absl::StatusCode::kOutOfRange);
}

TEST_CASE("empty index lists and duplicates are fine", "[planner]") {
  Layout L(1, 2, 656, 4096);
  std::vector<int64_t> off(4);
  REQUIRE(ResolveTopK(L.view, 0, {}, 10, absl::MakeSpan(off)).ok());
  std::vector<int32_t> dup = {3, 3, 3};
  REQUIRE(ResolveTopK(L.view, 0, dup, 10, absl::MakeSpan(off)).ok());
  REQUIRE(off[0] == off[1]);
  REQUIRE(off[1] == off[2]);
}

TEST_CASE("adjacent entries on one page coalesce: page breaks and gaps split", "[planner]") {
  Layout L(1, 4, 656, 4096);
  std::vector<int32_t> idx = {0, 1, 2, 3, 4, 5, 6, 9, 8};
  std::vector<int64_t> off(idx.size());
  REQUIRE(ResolveTopK(L.view, 0, idx, 20, absl::MakeSpan(off)).ok());
  std::vector<Segment> segs;
  REQUIRE(CoalesceSegments(off, 704, 656, &segs) == 4);
  REQUIRE(segs[0].entries == 5);          // tokens 0..4 on page 0
  REQUIRE(segs[1].entries == 2);          // tokens 5..6 on page 1
  REQUIRE(segs[1].dst_offset == 5 * 656);
  REQUIRE(segs[2].entries == 1);          // 9
  REQUIRE(segs[3].entries == 1);          // 8 (order kept, not merged backwards)
  REQUIRE(segs[3].dst_offset == 8 * 656);
  REQUIRE(CoalesceSegments({}, 704, 656, &segs) == 0);
}

TEST_CASE("the prefetching gather copies exactly the entries asked for, densely", "[planner][gather]") {
  const int32_t entry = 656, stride = 704, tokens = 64;
  std::vector<std::byte> pool(tokens * stride, std::byte{0xee});
  for (int t = 0; t < tokens; ++t) FillEntry(7, 0, t, entry, pool.data() + t * stride);
  std::vector<int32_t> idx = {63, 0, 5, 5, 17, 40, 1, 2, 3, 62, 31};
  std::vector<int64_t> off;
  for (int32_t t : idx) off.push_back(int64_t{t} * stride);
  for (GatherPrefetch prefetch : {GatherPrefetch{0, 0}, GatherPrefetch{1, 1}, GatherPrefetch{4, 2},
                                  GatherPrefetch{}, GatherPrefetch{64, 32}}) {
    int ahead = prefetch.far_entries;
    std::vector<std::byte> dst(idx.size() * entry + 1, std::byte{0x11});
    GatherEntries(pool.data(), off, entry, dst.data(), prefetch);
    for (size_t i = 0; i < idx.size(); ++i) {
      INFO("ahead " << ahead << " entry " << i);
      REQUIRE(EntryMatches(7, 0, idx[i], entry, dst.data() + i * entry));
    }
    REQUIRE(dst.back() == std::byte{0x11});  // nothing written past the last entry
  }
}

TEST_CASE("a negative committed length refuses every index (found by fuzz_planner)", "[planner]") {
  Layout L(1, 2, 656, 4096);
  std::vector<int64_t> off(2);
  std::vector<int32_t> idx = {0, 3};
  REQUIRE(ResolveTopK(L.view, 0, idx, -5, absl::MakeSpan(off)).code() == absl::StatusCode::kOutOfRange);
  REQUIRE(ResolveTopK(L.view, 0, idx, INT64_MIN, absl::MakeSpan(off)).code() == absl::StatusCode::kOutOfRange);
}
