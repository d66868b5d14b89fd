#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "server/page_allocator.h"

using namespace sparsekv;
using Clock = PageAllocator::Clock;

TEST_CASE("allocation is all or nothing", "[allocator]") {
  PageAllocator alloc(10);
  std::vector<uint32_t> pages;
  REQUIRE(alloc.Allocate(7, &pages).ok());
  REQUIRE(pages.size() == 7);
  auto refused = alloc.Allocate(4, &pages);
  REQUIRE(refused.code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(pages.size() == 7);  // unchanged
  REQUIRE(alloc.free_pages() == 3);
  REQUIRE(alloc.Allocate(3, &pages).ok());
  std::set<uint32_t> distinct(pages.begin(), pages.end());
  REQUIRE(distinct.size() == 10);
  REQUIRE(*distinct.rbegin() == 9);
}

TEST_CASE("freed pages come back: quarantined pages only after their deadline", "[allocator]") {
  PageAllocator alloc(4);
  std::vector<uint32_t> a, b;
  REQUIRE(alloc.Allocate(2, &a).ok());
  REQUIRE(alloc.Allocate(2, &b).ok());
  auto now = Clock::now();
  alloc.FreeAfter(a, now + std::chrono::seconds(10));
  REQUIRE(alloc.quarantined_pages() == 2);
  REQUIRE(alloc.used_pages() == 2);
  std::vector<uint32_t> c;
  REQUIRE(alloc.Allocate(1, &c).code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(alloc.ReclaimExpired(now + std::chrono::seconds(5)) == 0);
  REQUIRE(alloc.ReclaimExpired(now + std::chrono::seconds(10)) == 2);
  REQUIRE(alloc.quarantined_pages() == 0);
  REQUIRE(alloc.Allocate(2, &c).ok());
  std::sort(c.begin(), c.end());
  std::sort(a.begin(), a.end());
  REQUIRE(c == a);
  alloc.Free(b);
  REQUIRE(alloc.free_pages() == 2);
}

TEST_CASE("page allocator: AllocateIn takes pages of one range only, all or nothing", "[allocator]") {
  sparsekv::PageAllocator a(100);
  std::vector<uint32_t> got;
  REQUIRE(a.AllocateIn(10, 60, 80, &got).ok());
  REQUIRE(got.size() == 10);
  for (uint32_t p : got) REQUIRE((p >= 60 && p < 80));
  REQUIRE(a.free_pages_in(60, 80) == 10);
  REQUIRE(a.free_pages() == 90);
  std::vector<uint32_t> more;
  REQUIRE(a.AllocateIn(11, 60, 80, &more).code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(more.empty());
  REQUIRE(a.free_pages_in(60, 80) == 10);
  a.Free(got);
  REQUIRE(a.free_pages_in(60, 80) == 20);
  REQUIRE(a.AllocateIn(20, 60, 80, &more).ok());
  REQUIRE(a.free_pages_in(0, 60) == 60);
}
