// The residency cache's replacement policy on the CPU: the reference the GPU kernel must equal.
#include <catch2/catch.hpp>

#include <vector>

#include "client/cuda/residency_reference.h"

using sparsekv::cuda::ResidencyReference;
using sparsekv::cuda::StepResult;

TEST_CASE("residency reference: misses fill from the least-recent end, hits are found, padding reads nothing", "[residency]") {
  ResidencyReference cache(4);
  StepResult r;
  std::vector<int32_t> step1 = {10, 11, -1, 10};
  REQUIRE(cache.Step(step1.data(), 4, 100, &r));
  REQUIRE(r.misses == 2);
  REQUIRE(r.hits == 1);  // the second 10 is served by the same fetch
  REQUIRE(r.miss_tokens == std::vector<int32_t>{10, 11});
  REQUIRE(r.miss_slots == std::vector<int32_t>{3, 2});  // the least recent entries first
  REQUIRE(r.slots == std::vector<int32_t>{3, 2, -1, 3});
  REQUIRE(cache.order() == std::vector<int32_t>{2, 3, 0, 1});  // touched first, previous order kept
  std::vector<int32_t> step2 = {11, 12, 13};
  REQUIRE(cache.Step(step2.data(), 3, 100, &r));
  REQUIRE(r.hits == 1);
  REQUIRE(r.miss_slots == std::vector<int32_t>{1, 0});
  REQUIRE(cache.order() == std::vector<int32_t>{2, 0, 1, 3});
  // 10 is now the least recently used: the next miss evicts it.
  std::vector<int32_t> step3 = {14};
  REQUIRE(cache.Step(step3.data(), 1, 100, &r));
  REQUIRE(r.miss_slots == std::vector<int32_t>{3});
  REQUIRE(cache.tokens()[3] == 14);
}

TEST_CASE("residency reference: out-of-range indices are errors that read nothing, and too many misses fail", "[residency]") {
  ResidencyReference cache(2);
  StepResult r;
  std::vector<int32_t> bad = {5, -7, 50};
  REQUIRE(cache.Step(bad.data(), 3, 10, &r));
  REQUIRE(r.errors == 2);
  REQUIRE(r.misses == 1);
  REQUIRE(r.slots[1] == -1);
  REQUIRE(r.slots[2] == -1);
  std::vector<int32_t> many = {1, 2, 3};
  REQUIRE_FALSE(cache.Step(many.data(), 3, 10, &r));
}
