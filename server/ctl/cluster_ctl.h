// sparsekvctl's cluster commands (--cluster etcd://HOST:PORT/NAME): status, nodes, regions,
// drain NODE [--move] [--off], replicate KEY COPIES. Exit codes as sparsekvctl's.
#ifndef SPARSEKV_SERVER_CTL_CLUSTER_CTL_H_
#define SPARSEKV_SERVER_CTL_CLUSTER_CTL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/security/credentials.h>

namespace sparsekv {

int ClusterMain(const std::string& url, const std::vector<std::string>& rest, bool json, int64_t timeout_ms,
                std::shared_ptr<grpc::ChannelCredentials> credentials, const std::string& token);

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_CTL_CLUSTER_CTL_H_
