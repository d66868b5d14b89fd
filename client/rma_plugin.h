// The boundary between libsparsekv and its RMA plugin, libsparsekv-rma.so.
//
// libfabric and rdma-core are loaded only when a transport that needs them is chosen: Debian's
// libfabric pulls in the PSM/PSM2 libraries, whose constructors install a SIGSEGV handler, and a
// decode server (Python, PyTorch, its own crash handlers) must not get that from linking a
// KV-cache client. So the fabric and verbs transports live in a plugin that libsparsekv dlopens
// (client/rma_loader.h) the first time it opens one of them; clients that use shm or tcp-gather
// never load it. Only plain types cross this boundary (no protobuf: the plugin must not carry a
// second copy of the generated descriptors).
#ifndef SPARSEKV_CLIENT_RMA_PLUGIN_H_
#define SPARSEKV_CLIENT_RMA_PLUGIN_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/transport.h"

namespace sparsekv {

// The daemon's libfabric endpoint (v1::FabricDescriptor).
struct FabricPeer {
  std::string provider;
  uint32_t addr_format = 0;
  std::string address;
  uint64_t key = 0;
  uint64_t base = 0;
  uint64_t mr_mode = 0;
  bool software_rma = false;
};

// The daemon's rdmacm listener and pool registration (v1::VerbsDescriptor).
struct VerbsPeer {
  std::string host;
  int32_t port = 0;
  uint64_t base = 0;
  uint32_t rkey = 0;
  std::string device;
};

inline constexpr uint32_t kRmaPluginAbi = 1;

struct RmaPlugin {
  uint32_t abi = kRmaPluginAbi;
  // control_host replaces an unspecified address (0.0.0.0) in the peer's.
  absl::StatusOr<std::shared_ptr<RmaTransport>> (*open_fabric)(const FabricPeer& peer, const std::string& control_host,
                                                               int64_t timeout_ms, bool force_staging) = nullptr;
  absl::StatusOr<std::shared_ptr<RmaTransport>> (*open_verbs)(const VerbsPeer& peer, const std::string& control_host,
                                                              int64_t timeout_ms) = nullptr;
};

}  // namespace sparsekv

extern "C" const sparsekv::RmaPlugin* sparsekv_rma_plugin();

#endif  // SPARSEKV_CLIENT_RMA_PLUGIN_H_
