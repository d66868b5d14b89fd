// Work-request construction for the native ibverbs transport, kept apart from any device so it
// can be unit-tested on machines without RDMA hardware.
//
// A top-k fetch is a list of segments (local buffer <- remote pool range). BuildReadChain turns
// a prefix of them into a chain of RDMA READ (or WRITE) work requests linked by `next`, posted
// with one ibv_post_send (one doorbell):
//   - segments adjacent in the pool share one work request, each landing in its own local
//     scatter-gather element (up to max_sge per request);
//   - a gap of at most gap_sink_bytes between two pool ranges is read into a discard buffer so
//     the neighbours still share one request (for 656-byte entries on a 704-byte stride: 48 bytes
//     extra per entry, half the work requests);
//   - only every signal_every-th request and the last one are signaled (selective signaling);
//     a signaled request's wr_id is the number of requests its completion retires, so the poller
//     can bound outstanding work exactly;
//   - writes no larger than max_inline are sent inline.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_VERBS_WR_H_
#define SPARSEKV_CLIENT_TRANSPORTS_VERBS_WR_H_

#include <infiniband/verbs.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace sparsekv {

struct VerbsSegment {
  uint64_t local_addr;
  uint32_t length;
  uint64_t remote_addr;
};

struct VerbsChainOptions {
  bool write = false;
  uint32_t lkey = 0;
  uint32_t rkey = 0;
  int max_sge = 1;            // the queue pair's max_send_sge
  int max_wr = 1;             // requests this chain may hold (free send-queue slots)
  int signal_every = 64;      // selective signaling stride
  uint32_t max_inline = 0;    // the queue pair's max_inline_data (writes only)
  uint64_t gap_sink_addr = 0; // registered discard buffer for gaps (reads only); 0: none
  uint32_t gap_sink_bytes = 0;
  uint32_t gap_sink_lkey = 0;
  uint32_t max_request_bytes = 1u << 30;  // the port's max message size
};

struct VerbsChain {
  std::vector<ibv_send_wr> wrs;
  std::vector<ibv_sge> sges;
  int signaled = 0;           // signaled requests in the chain
  size_t extra_bytes = 0;     // gap bytes read into the sink
};

// Builds requests for segments[0, n) with n as large as the options allow and returns n (at
// least 1 when segments is not empty and max_wr >= 1). `out` is overwritten; its wrs are linked
// and their sg_list pointers point into out->sges.
size_t BuildChain(absl::Span<const VerbsSegment> segments, const VerbsChainOptions& options, VerbsChain* out);

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_VERBS_WR_H_
