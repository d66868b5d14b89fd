// Work-request construction of the native verbs transport, tested without any RDMA device.
#include <catch2/catch.hpp>

#include <vector>

#include "client/transports/verbs_wr.h"

using namespace sparsekv;

namespace {

VerbsChainOptions Reads(int max_sge, int max_wr) {
  VerbsChainOptions o;
  o.lkey = 0x11;
  o.rkey = 0x22;
  o.max_sge = max_sge;
  o.max_wr = max_wr;
  o.signal_every = 4;
  return o;
}

// Sum of sge lengths of one request.
uint64_t Bytes(const ibv_send_wr& wr) {
  uint64_t n = 0;
  for (int i = 0; i < wr.num_sge; ++i) n += wr.sg_list[i].length;
  return n;
}

}  // namespace

TEST_CASE("verbs WRs: scattered entries become one RDMA READ each, chained, with remote address and rkey", "[verbs]") {
  std::vector<VerbsSegment> segs = {{0x1000, 656, 0x900000}, {0x2000, 656, 0x100000}, {0x3000, 656, 0x500000}};
  VerbsChain chain;
  REQUIRE(BuildChain(segs, Reads(4, 16), &chain) == 3);
  REQUIRE(chain.wrs.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    const ibv_send_wr& wr = chain.wrs[i];
    CHECK(wr.opcode == IBV_WR_RDMA_READ);
    CHECK(wr.wr.rdma.remote_addr == segs[i].remote_addr);
    CHECK(wr.wr.rdma.rkey == 0x22u);
    REQUIRE(wr.num_sge == 1);
    CHECK(wr.sg_list[0].addr == segs[i].local_addr);
    CHECK(wr.sg_list[0].length == 656u);
    CHECK(wr.sg_list[0].lkey == 0x11u);
    CHECK(wr.next == (i + 1 < 3 ? &chain.wrs[i + 1] : nullptr));  // one doorbell for the chain
  }
}

TEST_CASE("verbs WRs: entries adjacent in the pool share one request, scattered locally, up to max_sge", "[verbs]") {
  std::vector<VerbsSegment> segs;
  for (int i = 0; i < 5; ++i) segs.push_back({0x10000u + 0x1000u * i, 704, 0x200000u + 704u * i});
  VerbsChain chain;
  REQUIRE(BuildChain(segs, Reads(3, 16), &chain) == 5);
  REQUIRE(chain.wrs.size() == 2);  // 3 + 2
  CHECK(chain.wrs[0].num_sge == 3);
  CHECK(chain.wrs[0].wr.rdma.remote_addr == 0x200000u);
  CHECK(Bytes(chain.wrs[0]) == 3 * 704);
  CHECK(chain.wrs[0].sg_list[2].addr == 0x12000u);
  CHECK(chain.wrs[1].num_sge == 2);
  CHECK(chain.wrs[1].wr.rdma.remote_addr == 0x200000u + 3 * 704);
}

TEST_CASE("verbs WRs: a small gap between pool ranges is read into the sink so neighbours still share a request", "[verbs]") {
  // 656-byte entries on a 704-byte stride: 48-byte gaps.
  std::vector<VerbsSegment> segs;
  for (int i = 0; i < 3; ++i) segs.push_back({0x10000u + 656u * i, 656, 0x200000u + 704u * i});
  VerbsChainOptions o = Reads(8, 16);
  o.gap_sink_addr = 0xdead0000;
  o.gap_sink_bytes = 64;
  o.gap_sink_lkey = 0x33;
  VerbsChain chain;
  REQUIRE(BuildChain(segs, o, &chain) == 3);
  REQUIRE(chain.wrs.size() == 1);
  REQUIRE(chain.wrs[0].num_sge == 5);  // entry, gap, entry, gap, entry
  CHECK(chain.wrs[0].sg_list[1].addr == 0xdead0000u);
  CHECK(chain.wrs[0].sg_list[1].length == 48u);
  CHECK(chain.wrs[0].sg_list[1].lkey == 0x33u);
  CHECK(chain.wrs[0].sg_list[2].addr == 0x10000u + 656u);
  CHECK(Bytes(chain.wrs[0]) == 3 * 656 + 2 * 48);
  CHECK(chain.extra_bytes == 96);
  // A gap larger than the sink, or no sink: separate requests. Writes never use the sink.
  o.gap_sink_bytes = 32;
  REQUIRE(BuildChain(segs, o, &chain) == 3);
  CHECK(chain.wrs.size() == 3);
  o.gap_sink_bytes = 64;
  o.write = true;
  REQUIRE(BuildChain(segs, o, &chain) == 3);
  CHECK(chain.wrs.size() == 3);
  CHECK(chain.extra_bytes == 0);
}

TEST_CASE("verbs WRs: selective signaling, wr_id counts the requests a completion retires", "[verbs]") {
  std::vector<VerbsSegment> segs;
  for (int i = 0; i < 10; ++i) segs.push_back({0x1000u * i, 64, 0x100000u * i});  // none adjacent
  VerbsChain chain;
  REQUIRE(BuildChain(segs, Reads(1, 64), &chain) == 10);
  int signaled = 0;
  uint64_t retired = 0;
  for (const auto& wr : chain.wrs) {
    if (wr.send_flags & IBV_SEND_SIGNALED) {
      ++signaled;
      retired += wr.wr_id;
    }
  }
  CHECK(signaled == 3);  // requests 4, 8 and the last
  CHECK(chain.signaled == 3);
  CHECK(retired == 10);  // every request is accounted for exactly once
  CHECK((chain.wrs.back().send_flags & IBV_SEND_SIGNALED) != 0);
}

TEST_CASE("verbs WRs: outstanding work is bounded by max_wr, the rest is left for the next chain", "[verbs]") {
  std::vector<VerbsSegment> segs;
  for (int i = 0; i < 10; ++i) segs.push_back({0x1000u * i, 64, 0x100000u * i});
  VerbsChain chain;
  REQUIRE(BuildChain(segs, Reads(1, 4), &chain) == 4);
  CHECK(chain.wrs.size() == 4);
  CHECK((chain.wrs.back().send_flags & IBV_SEND_SIGNALED) != 0);
  REQUIRE(BuildChain(absl::MakeConstSpan(segs).subspan(4), Reads(1, 4), &chain) == 4);
  CHECK(chain.wrs[0].wr.rdma.remote_addr == 0x400000u);
  REQUIRE(BuildChain({}, Reads(1, 4), &chain) == 0);
  CHECK(chain.wrs.empty());
  REQUIRE(BuildChain(segs, Reads(1, 0), &chain) == 0);
}

TEST_CASE("verbs WRs: small writes go inline, large ones do not, and request size is capped", "[verbs]") {
  std::vector<VerbsSegment> segs = {{0x1000, 60, 0x5000}, {0x2000, 656, 0x9000}};
  VerbsChainOptions o = Reads(4, 8);
  o.write = true;
  o.max_inline = 64;
  VerbsChain chain;
  REQUIRE(BuildChain(segs, o, &chain) == 2);
  CHECK(chain.wrs[0].opcode == IBV_WR_RDMA_WRITE);
  CHECK((chain.wrs[0].send_flags & IBV_SEND_INLINE) != 0);
  CHECK((chain.wrs[1].send_flags & IBV_SEND_INLINE) == 0);
  // Adjacent in the pool but past max_request_bytes: two requests.
  std::vector<VerbsSegment> adjacent = {{0x1000, 4096, 0x10000}, {0x2000, 4096, 0x11000}};
  VerbsChainOptions capped = Reads(4, 8);
  capped.max_request_bytes = 6000;
  REQUIRE(BuildChain(adjacent, capped, &chain) == 2);
  CHECK(chain.wrs.size() == 2);
}
