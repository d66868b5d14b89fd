// FabricTransport: one-sided RMA through libfabric. Entries are read with fi_read and written
// with fi_write straight between the daemon's registered pool and the caller's buffers: many
// operations in flight (bounded by the provider's transmit queue), completions reaped from a
// completion queue, every provider error mapped to a status (common/fabric_util.h).
//
// Destination buffers registered with RegisterBuffer are used in place; others go through a
// registered staging area when the provider needs local registration (FI_MR_LOCAL), or when
// staging is forced (tests). Each call takes a lane (endpoint + completion queue + address
// vector) of its own, so concurrent callers do not serialise. A lane whose call failed or timed
// out is closed before the call returns: no late completion can write into a caller's buffer.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_FABRIC_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORTS_FABRIC_TRANSPORT_H_

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>

#include <atomic>
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

namespace sparsekv {

class FabricTransport final : public RmaTransport {
 public:
  // control_host replaces an IPv4 0.0.0.0 in the daemon's address.
  static absl::StatusOr<std::shared_ptr<FabricTransport>> Open(const FabricPeer& daemon,
                                                               const std::string& control_host, int64_t timeout_ms,
                                                               bool force_staging);
  ~FabricTransport() override;

  const char* name() const override { return "fabric"; }

  absl::Status RegisterBuffer(void* addr, size_t bytes) override;
  absl::Status UnregisterBuffer(void* addr) override;
  const std::string& provider() const { return provider_; }
  bool software_rma() const { return software_rma_; }

  struct Lane;

 private:
  FabricTransport() = default;
  absl::StatusOr<std::unique_ptr<Lane>> AcquireLane();
  void ReleaseLane(std::unique_ptr<Lane> lane);
  absl::Status Read(absl::Span<const GatherWork> work) override;
  void* DescFor(const std::byte* p, size_t len);  // registered buffer's descriptor, or null

  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  std::string provider_;
  std::string address_;      // the daemon's endpoint name
  uint64_t key_ = 0;
  uint64_t base_ = 0;
  bool need_local_mr_ = false;
  bool software_rma_ = false;
  bool force_staging_ = false;
  int64_t timeout_ms_ = 5000;
  size_t max_inflight_ = 256;
  size_t max_msg_ = 1 << 30;
  std::atomic<uint64_t> next_key_{1};  // local registrations need distinct keys (no FI_MR_PROV_KEY)

  absl::Mutex mu_;
  IdleLanes<Lane> idle_ ABSL_GUARDED_BY(mu_);
  RegisteredBuffers<fid_mr*> registered_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_FABRIC_TRANSPORT_H_
