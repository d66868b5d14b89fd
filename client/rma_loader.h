// Loads the RMA plugin (client/rma_plugin.h) on first use and opens fabric and verbs transports
// through it. Loading, and opening a transport (when libfabric initialises its providers), run
// under a guard that snapshots every signal disposition of the process first and puts back any
// that the loaded libraries changed, so a host process keeps its own crash handling (and no
// library's handler writes files into its working directory).
//
// Where the plugin is looked for, first found wins: $SPARSEKV_RMA_PLUGIN; sparsekv/ beside the
// libsparsekv.so in use (the installed layout, <libdir>/sparsekv/libsparsekv-rma.so); the install
// path this build was configured with; the build tree.
#ifndef SPARSEKV_CLIENT_RMA_LOADER_H_
#define SPARSEKV_CLIENT_RMA_LOADER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/transport.h"
#include "sparsekv/v1/control.pb.h"

namespace sparsekv {

absl::StatusOr<std::shared_ptr<RmaTransport>> OpenFabricTransport(const v1::FabricDescriptor& daemon,
                                                                  const std::string& control_host,
                                                                  int64_t timeout_ms, bool force_staging);
absl::StatusOr<std::shared_ptr<RmaTransport>> OpenVerbsTransport(const v1::VerbsDescriptor& daemon,
                                                                 const std::string& control_host, int64_t timeout_ms);

// Whether this process has loaded the plugin (and so libfabric and rdma-core), and from where.
bool RmaPluginLoaded();
std::string RmaPluginPath();

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_RMA_LOADER_H_
