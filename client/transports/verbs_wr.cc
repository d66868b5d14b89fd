#include "client/transports/verbs_wr.h"

#include <algorithm>

namespace sparsekv {

size_t BuildChain(absl::Span<const VerbsSegment> segments, const VerbsChainOptions& o, VerbsChain* out) {
  out->wrs.clear();
  out->sges.clear();
  out->signaled = 0;
  out->extra_bytes = 0;
  if (segments.empty() || o.max_wr < 1) return 0;
  const int max_sge = std::max(1, o.max_sge);
  // Pass 1: decide the requests as [first segment, end) ranges and their SGE counts, so the
  // sge vector is sized once and the sg_list pointers stay valid.
  struct Plan {
    size_t first, end;
    int sges;
  };
  std::vector<Plan> plans;
  size_t i = 0;
  while (i < segments.size() && static_cast<int>(plans.size()) < o.max_wr) {
    Plan p{i, i + 1, 1};
    uint64_t remote_end = segments[i].remote_addr + segments[i].length;
    uint64_t bytes = segments[i].length;
    while (p.end < segments.size()) {
      const VerbsSegment& next = segments[p.end];
      const bool adjacent = next.remote_addr == remote_end;
      const bool sinkable = !o.write && o.gap_sink_addr != 0 && next.remote_addr > remote_end &&
                            next.remote_addr - remote_end <= o.gap_sink_bytes;
      if (!adjacent && !sinkable) break;
      const int need = adjacent ? 1 : 2;
      const uint64_t add = next.remote_addr + next.length - remote_end;
      if (p.sges + need > max_sge || bytes + add > o.max_request_bytes) break;
      p.sges += need;
      bytes += add;
      remote_end = next.remote_addr + next.length;
      ++p.end;
    }
    plans.push_back(p);
    i = p.end;
  }
  size_t total_sges = 0;
  for (const Plan& p : plans) total_sges += static_cast<size_t>(p.sges);
  out->sges.resize(total_sges);
  out->wrs.assign(plans.size(), ibv_send_wr{});
  // Pass 2: fill them.
  size_t sge_at = 0;
  int since_signal = 0;
  for (size_t w = 0; w < plans.size(); ++w) {
    const Plan& p = plans[w];
    ibv_send_wr& wr = out->wrs[w];
    wr.sg_list = &out->sges[sge_at];
    wr.opcode = o.write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
    wr.wr.rdma.remote_addr = segments[p.first].remote_addr;
    wr.wr.rdma.rkey = o.rkey;
    uint64_t remote_end = segments[p.first].remote_addr;
    uint32_t bytes = 0;
    for (size_t s = p.first; s < p.end; ++s) {
      if (segments[s].remote_addr > remote_end) {  // a gap: into the sink
        const uint32_t gap = static_cast<uint32_t>(segments[s].remote_addr - remote_end);
        out->sges[sge_at++] = {o.gap_sink_addr, gap, o.gap_sink_lkey};
        out->extra_bytes += gap;
        bytes += gap;
      }
      out->sges[sge_at++] = {segments[s].local_addr, segments[s].length, o.lkey};
      bytes += segments[s].length;
      remote_end = segments[s].remote_addr + segments[s].length;
    }
    wr.num_sge = static_cast<int>(&out->sges[0] + sge_at - wr.sg_list);
    if (o.write && bytes <= o.max_inline) wr.send_flags |= IBV_SEND_INLINE;
    ++since_signal;
    if (since_signal >= o.signal_every || w + 1 == plans.size()) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      wr.wr_id = static_cast<uint64_t>(since_signal);  // requests this completion retires
      since_signal = 0;
      ++out->signaled;
    }
    wr.next = w + 1 < plans.size() ? &out->wrs[w + 1] : nullptr;
  }
  return plans.empty() ? 0 : plans.back().end;
}

}  // namespace sparsekv
