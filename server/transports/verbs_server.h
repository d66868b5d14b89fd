// VerbsServer: the daemon's native ibverbs endpoint. An rdmacm listener accepts reliable-
// connected queue pairs from clients; the pool is registered once per RDMA device with remote
// read and write access, and OpenRegion replies carry its address and rkey. Clients then move
// entries with one-sided RDMA READ/WRITE: the daemon's CPUs are not involved after connect.
#ifndef SPARSEKV_SERVER_TRANSPORTS_VERBS_SERVER_H_
#define SPARSEKV_SERVER_TRANSPORTS_VERBS_SERVER_H_

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/pool.h"
#include "sparsekv/v1/control.pb.h"

namespace sparsekv {

class VerbsServer {
 public:
  // FAILED_PRECONDITION "no RDMA device" where ibv_get_device_list finds none.
  static absl::StatusOr<std::unique_ptr<VerbsServer>> Start(Pool* pool, const std::string& host,
                                                           int64_t shared_bytes = 0);
  // A registration (rkey) of pool bytes [offset, offset + bytes) only, for one tenant arena.
  absl::StatusOr<v1::VerbsDescriptor> AddArena(int64_t offset, int64_t bytes);
  ~VerbsServer();
  const v1::VerbsDescriptor& descriptor() const { return descriptor_; }

 private:
  VerbsServer() = default;
  void EventLoop();

  Pool* pool_ = nullptr;
  rdma_event_channel* channel_ = nullptr;
  rdma_cm_id* listener_ = nullptr;
  ibv_context* context_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_mr* mr_ = nullptr;
  std::vector<ibv_mr*> arena_mrs_;
  std::vector<rdma_cm_id*> connections_;
  int wake_pipe_[2] = {-1, -1};
  std::thread events_;
  v1::VerbsDescriptor descriptor_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_TRANSPORTS_VERBS_SERVER_H_
