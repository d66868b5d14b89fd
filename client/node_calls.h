// NodeCalls: the calls one cluster node makes on a client of another (replica copies, the
// caller's namespace, replicate) beyond the public API. Not installed.
#ifndef SPARSEKV_CLIENT_NODE_CALLS_H_
#define SPARSEKV_CLIENT_NODE_CALLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "sparsekv/client.h"
#include "sparsekv/v1/control.pb.h"

namespace sparsekv {

struct NodeCalls {
  // A node copying its sealed region `spec.key` to this client's daemon: creates the copy
  // without claiming the key in the directory (the source lists the copy once it is sealed).
  static absl::StatusOr<std::shared_ptr<Region>> CreateReplica(Client& client, const RegionSpec& spec,
                                                               const std::string& source_node);
  // The caller's namespace in the client's daemon ("TENANT/" or "").
  static absl::StatusOr<std::string> Namespace(Client& client);
  // Asks the client's daemon to copy its sealed region `key` until `replicas` live nodes hold it.
  static absl::StatusOr<v1::ReplicateRegionResponse> Replicate(Client& client, const std::string& key,
                                                               int32_t replicas, bool exclude_self);
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_NODE_CALLS_H_
