// libsparsekv-rma.so: the fabric and verbs transports behind client/rma_plugin.h.
#include "client/rma_plugin.h"

#include "client/transports/fabric_transport.h"
#include "client/transports/verbs_transport.h"

namespace sparsekv {
namespace {

absl::StatusOr<std::shared_ptr<RmaTransport>> OpenFabric(const FabricPeer& peer, const std::string& control_host,
                                                         int64_t timeout_ms, bool force_staging) {
  auto t = FabricTransport::Open(peer, control_host, timeout_ms, force_staging);
  if (!t.ok()) return t.status();
  return std::shared_ptr<RmaTransport>(*std::move(t));
}

absl::StatusOr<std::shared_ptr<RmaTransport>> OpenVerbs(const VerbsPeer& peer, const std::string& control_host,
                                                        int64_t timeout_ms) {
  auto t = VerbsTransport::Connect(peer, control_host, timeout_ms);
  if (!t.ok()) return t.status();
  return std::shared_ptr<RmaTransport>(*std::move(t));
}

const RmaPlugin kPlugin{kRmaPluginAbi, &OpenFabric, &OpenVerbs};

}  // namespace
}  // namespace sparsekv

extern "C" __attribute__((visibility("default"))) const sparsekv::RmaPlugin* sparsekv_rma_plugin() {
  return &sparsekv::kPlugin;
}
