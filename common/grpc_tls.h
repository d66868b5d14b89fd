// Client-side control-plane security shared by libsparsekv and sparsekvctl.
#ifndef SPARSEKV_COMMON_GRPC_TLS_H_
#define SPARSEKV_COMMON_GRPC_TLS_H_

#include <grpcpp/security/credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sparsekv {

struct ControlPlaneSecurity {
  std::string token;      // bearer token; "" : none
  std::string ca_file;    // PEM CA that signed the daemon's certificate; "" : plaintext
  std::string cert_file;  // PEM client certificate + key for mutual TLS; "" : none
  std::string key_file;
};

// Reads a PEM file; NOT_FOUND or INVALID_ARGUMENT (not PEM) naming `what` and the path.
absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what);

// Fills empty fields from SPARSEKV_TOKEN, SPARSEKV_TLS_CA, SPARSEKV_TLS_CERT, SPARSEKV_TLS_KEY.
ControlPlaneSecurity WithEnvironment(ControlPlaneSecurity s);

// TLS credentials when a CA is given (with a client certificate when one is), else plaintext.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(const ControlPlaneSecurity& s);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_GRPC_TLS_H_
