// VerbsTransport: native ibverbs. Reliable-connected queue pairs to the daemon's rdmacm
// listener; a top-k fetch is posted as chains of RDMA READ work requests, one doorbell per chain
// (verbs_wr.h: adjacent entries share a request, small gaps go to a discard buffer, selective
// signaling, outstanding work bounded by the send queue). Memory is registered once: the pool by
// the daemon, client buffers through RegisterBuffer; other buffers go through a registered
// staging area. A connection whose call failed or timed out is torn down before the call
// returns (its queue pair is in the error state anyway), so no late completion writes into a
// caller's buffer.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_VERBS_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORTS_VERBS_TRANSPORT_H_

#include <infiniband/verbs.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/transports/rma_registry.h"
#include "client/transport.h"
#include "client/rma_plugin.h"
#include "common/rdma_devices.h"

namespace sparsekv {


class VerbsTransport final : public RmaTransport {
 public:
  static absl::StatusOr<std::shared_ptr<VerbsTransport>> Connect(const VerbsPeer& daemon,
                                                                 const std::string& control_host, int64_t timeout_ms);
  ~VerbsTransport() override;

  const char* name() const override { return "verbs"; }
  absl::Status RegisterBuffer(void* addr, size_t bytes) override;
  absl::Status UnregisterBuffer(void* addr) override;

  struct Connection;

 private:
  VerbsTransport() = default;
  absl::StatusOr<std::unique_ptr<Connection>> AcquireConnection();
  void ReleaseConnection(std::unique_ptr<Connection> c);
  absl::Status Read(absl::Span<const GatherWork> work) override;
  ibv_mr* MrFor(const std::byte* p, size_t len);

  VerbsPeer daemon_;
  std::string host_;
  int64_t timeout_ms_ = 5000;
  absl::Mutex mu_;
  ibv_pd* pd_ ABSL_GUARDED_BY(mu_) = nullptr;  // of the device the first connection resolved to
  IdleLanes<Connection> idle_ ABSL_GUARDED_BY(mu_);
  RegisteredBuffers<ibv_mr*> registered_ ABSL_GUARDED_BY(mu_);
  std::map<void*, size_t> pending_ ABSL_GUARDED_BY(mu_);  // registered before the device was known
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_VERBS_TRANSPORT_H_
