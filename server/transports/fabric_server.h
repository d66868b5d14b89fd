// FabricServer: the daemon's libfabric endpoint for one-sided RMA. It opens a fabric domain on
// the configured provider, registers the whole pool once for remote read only, and publishes
// provider, endpoint address, key and addressing mode in every OpenRegion reply. Clients then
// fi_read pool bytes directly (writes go through the daemon-checked tcp-gather path, which can
// refuse a sealed region's pages and acknowledges only bytes in pool memory); the daemon only drives progress (software
// providers such as tcp need the target side polled).
#ifndef SPARSEKV_SERVER_TRANSPORTS_FABRIC_SERVER_H_
#define SPARSEKV_SERVER_TRANSPORTS_FABRIC_SERVER_H_

#include <rdma/fabric.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "sparsekv/v1/control.pb.h"
#include "server/pool.h"

namespace sparsekv {

class FabricServer {
 public:
  // provider: "auto" (hardware providers first: verbs, efa, cxi; then tcp), or a libfabric
  // provider name ("tcp", "verbs", "efa", "cxi", "tcp;ofi_rxm", ...). host: the IPv4 address to
  // bind (the host of [listen] data).
  // The shared registration covers pool bytes [0, shared_bytes) (the whole pool by default);
  // tenant arenas get registrations and keys of their own (AddArena).
  static absl::StatusOr<std::unique_ptr<FabricServer>> Start(Pool* pool, const std::string& provider,
                                                            const std::string& host, int64_t shared_bytes = 0);
  // Registers pool bytes [offset, offset + bytes) under a key of its own: the descriptor handed
  // to that arena's tenant reaches nothing else.
  absl::StatusOr<v1::FabricDescriptor> AddArena(int64_t offset, int64_t bytes);
  ~FabricServer();

  const v1::FabricDescriptor& descriptor() const { return descriptor_; }
  std::string Describe() const;  // "provider tcp;ofi_rxm at 127.0.0.1:40123, key ..., software RMA"

 private:
  FabricServer() = default;
  void ProgressLoop();

  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_av* av_ = nullptr;
  fid_cq* cq_ = nullptr;
  fid_ep* ep_ = nullptr;
  fid_mr* mr_ = nullptr;
  std::vector<fid_mr*> arena_mrs_;
  Pool* pool_ = nullptr;
  v1::FabricDescriptor descriptor_;
  std::string address_text_;
  std::atomic<bool> stop_{false};
  std::thread progress_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_TRANSPORTS_FABRIC_SERVER_H_
