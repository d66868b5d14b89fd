#include <catch2/catch.hpp>

#include <numeric>
#include <random>
#include <vector>

#include "client/fetch_planner.h"
#include "common/entry_pattern.h"

using namespace sparsekv;

namespace {

// A pool of `tokens` entries of one layer laid out contiguously (stride apart).
struct FakePool {
  int32_t entry, stride;
  std::vector<std::byte> bytes;
  FakePool(int64_t tokens, int32_t entry_bytes) : entry(entry_bytes), stride(static_cast<int32_t>(RoundUpToCacheLine(entry_bytes))) {
    bytes.resize(static_cast<size_t>(tokens) * stride);
    for (int64_t t = 0; t < tokens; ++t) FillEntry(5, 0, t, entry, bytes.data() + t * stride);
  }
};

}  // namespace

TEST_CASE("a batch plan delivers exactly what a naive gather would, for random batches", "[batch_planner]") {
  std::mt19937 rng(11);
  for (int round = 0; round < 50; ++round) {
    FakePool pool(2000, round % 2 ? 656 : 132);
    int items = 1 + static_cast<int>(rng() % 6);
    std::vector<std::vector<int32_t>> idx(items);
    std::vector<std::vector<std::byte>> dst(items);
    std::vector<std::vector<PlanEntry>> entries(items);
    std::vector<PlanGroup> groups;
    for (int i = 0; i < items; ++i) {
      int k = static_cast<int>(rng() % 300);
      for (int j = 0; j < k; ++j) idx[i].push_back(rng() % 4 == 0 ? static_cast<int32_t>(j) : static_cast<int32_t>(rng() % 2000));
      dst[i].assign(static_cast<size_t>(k) * pool.entry, std::byte{0});
      for (int j = 0; j < k; ++j) entries[i].push_back({int64_t{idx[i][j]} * pool.stride, dst[i].data() + j * pool.entry});
      groups.push_back({entries[i], pool.entry, pool.stride});
    }
    BatchPlan plan;
    PlanLimits limits{.max_read_bytes = 8 * 1024, .max_unit_bytes = 64 * 1024, .max_unit_reads = 16};
    REQUIRE(PlanBatch(groups, limits, &plan).ok());
    ExecutePlanLocally(plan, pool.bytes.data());
    for (int i = 0; i < items; ++i) {
      for (size_t j = 0; j < idx[i].size(); ++j) {
        INFO("round " << round << " item " << i << " entry " << j);
        REQUIRE(EntryMatches(5, 0, idx[i][j], pool.entry, dst[i].data() + j * pool.entry));
      }
    }
    // Limits hold and every read is accounted for.
    uint32_t begin = 0;
    for (uint32_t end : plan.unit_ends) {
      int64_t bytes = 0;
      for (uint32_t r = begin; r < end; ++r) {
        REQUIRE(plan.reads[r].bytes <= limits.max_read_bytes);
        bytes += plan.reads[r].bytes;
      }
      REQUIRE((end - begin == 1 || bytes <= limits.max_unit_bytes));
      REQUIRE(end - begin <= static_cast<uint32_t>(limits.max_unit_reads));
      begin = end;
    }
    REQUIRE(begin == plan.reads.size());
    REQUIRE(plan.dsts.size() + plan.copies.size() == static_cast<size_t>(plan.entries));
  }
}

TEST_CASE("adjacent entries coalesce into one read, across items: duplicates are read once", "[batch_planner]") {
  FakePool pool(100, 656);
  std::vector<std::byte> a(5 * 656), b(3 * 656);
  // Item a asks for 10,11,12,12,20; item b for 13,14,11.
  std::vector<PlanEntry> ea, eb;
  for (auto [j, t] : std::vector<std::pair<int, int>>{{0, 10}, {1, 11}, {2, 12}, {3, 12}, {4, 20}}) ea.push_back({t * 704, a.data() + j * 656});
  for (auto [j, t] : std::vector<std::pair<int, int>>{{0, 13}, {1, 14}, {2, 11}}) eb.push_back({t * 704, b.data() + j * 656});
  std::vector<PlanGroup> groups = {{ea, 656, 704}, {eb, 656, 704}};
  BatchPlan plan;
  REQUIRE(PlanBatch(groups, {}, &plan).ok());
  REQUIRE(plan.reads.size() == 2);          // 10..14 and 20
  REQUIRE(plan.reads[0].entries == 5);
  REQUIRE(plan.reads[0].bytes == 4 * 704 + 656);
  REQUIRE(plan.reads[1].entries == 1);
  REQUIRE(plan.copies.size() == 2);         // 11 and 12 asked twice
  REQUIRE(plan.entries == 8);
  REQUIRE(plan.bytes_read == 4 * 704 + 656 + 656);
  ExecutePlanLocally(plan, pool.bytes.data());
  REQUIRE(EntryMatches(5, 0, 12, 656, a.data() + 3 * 656));
  REQUIRE(EntryMatches(5, 0, 11, 656, b.data() + 2 * 656));
}

TEST_CASE("reads stop at the read limit, units at their limits: empty batches plan nothing", "[batch_planner]") {
  FakePool pool(1000, 64);
  std::vector<std::byte> dst(1000 * 64);
  std::vector<PlanEntry> all;
  for (int t = 0; t < 1000; ++t) all.push_back({t * 64, dst.data() + t * 64});
  std::vector<PlanGroup> groups = {{all, 64, 64}};
  BatchPlan plan;
  REQUIRE(PlanBatch(groups, {.max_read_bytes = 4096, .max_unit_bytes = 8192, .max_unit_reads = 100}, &plan).ok());
  REQUIRE(plan.reads.size() == 16);            // 64000 bytes in 4 KiB reads (last one shorter)
  REQUIRE(plan.unit_ends.size() == 8);         // two 4 KiB reads per 8 KiB unit
  ExecutePlanLocally(plan, pool.bytes.data());
  REQUIRE(std::memcmp(dst.data(), pool.bytes.data(), dst.size()) == 0);

  REQUIRE(PlanBatch({}, {}, &plan).ok());
  REQUIRE(plan.reads.empty());
  REQUIRE(plan.unit_ends.empty());
  std::vector<PlanEntry> none;
  std::vector<PlanGroup> empty_groups = {{none, 656, 704}};
  REQUIRE(PlanBatch(empty_groups, {}, &plan).ok());
  REQUIRE(plan.entries == 0);
}

TEST_CASE("bad plan inputs are INVALID_ARGUMENT", "[batch_planner]") {
  BatchPlan plan;
  std::vector<PlanEntry> one = {{0, nullptr}};
  std::vector<PlanGroup> bad_stride = {{one, 656, 600}};
  REQUIRE(PlanBatch(bad_stride, {}, &plan).code() == absl::StatusCode::kInvalidArgument);
  std::vector<PlanGroup> huge = {{one, 4096, 4096}};
  REQUIRE(PlanBatch(huge, {.max_read_bytes = 1024}, &plan).code() == absl::StatusCode::kInvalidArgument);
  std::vector<PlanGroup> ok = {{one, 64, 64}};
  REQUIRE(PlanBatch(ok, {.max_unit_reads = 0}, &plan).code() == absl::StatusCode::kInvalidArgument);
}
