// The one place where absl::Status and grpc::Status meet.
//
// Every module returns absl::Status; the control service converts on the way out and the client
// converts on the way in, so codes and messages survive the wire unchanged.
#ifndef SPARSEKV_COMMON_GRPC_STATUS_H_
#define SPARSEKV_COMMON_GRPC_STATUS_H_

#include "absl/strings/string_view.h"

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sparsekv {

grpc::Status ToGrpcStatus(const absl::Status& status);

// `what` names the call for transport-level failures ("CreateRegion to 127.0.0.1:7370").
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view what = {});

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_GRPC_STATUS_H_
