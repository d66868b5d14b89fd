// TcpGatherTransport reaches a pool over TCP through the daemon's server-side gather: each
// Gather sends the ranges of all its entries in one message and receives every byte in one
// reply, straight into the caller's buffer; Scatter sends ranges and bytes in one message. For
// hosts that cannot map the pool and fabrics without one-sided RMA.
//
// Connections are pooled; a call that fails or times out closes its connection (a half-read
// stream is never reused) and returns UNAVAILABLE or DEADLINE_EXCEEDED: never a hang, and never
// partially written output reported as success.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_TCP_GATHER_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORTS_TCP_GATHER_TRANSPORT_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/transport.h"

namespace sparsekv {

class TcpGatherTransport final : public Transport {
 public:
  // `connections`: how many streams one batch is spread over (the daemon gathers each on its own
  // thread; the client receives them all on the calling thread).
  TcpGatherTransport(std::string host, int port, int64_t timeout_ms, int connections = 4, uint64_t secret = 0);
  ~TcpGatherTransport() override;

  const char* name() const override { return "tcp-gather"; }
  absl::Status Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes, std::byte* dst) override;
  absl::Status Scatter(const std::byte* src, int32_t entry_bytes, absl::Span<const int64_t> pool_offsets) override;
  // Splits the batch into requests of similar size, spreads them over the connections and
  // keeps every connection busy: each reply is received straight into the callers' buffers.
  absl::Status GatherBatch(absl::Span<const GatherWork> work) override;
  bool prefers_batch() const override { return true; }

 private:
  absl::StatusOr<int> Acquire();
  void Release(int fd);
  // One write request: ranges and payload in one message, an empty reply. (Reads go through
  // GatherBatch.)
  absl::Status Write(absl::Span<const int64_t> offsets, int32_t entry_bytes, const std::byte* payload);

  const std::string host_;
  const int port_;
  const int64_t timeout_ms_;
  const int connections_;
  const uint64_t secret_;  // the arena's gather secret
  std::atomic<uint64_t> next_id_{1};
  absl::Mutex mu_;
  std::vector<int> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_TCP_GATHER_TRANSPORT_H_
