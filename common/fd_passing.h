// Passing the pool's file descriptor over a Unix socket (SCM_RIGHTS).
//
// A memfd pool has no path; same-host clients map it by receiving the descriptor. The daemon
// serves one descriptor per connection together with the pool's uuid, so a client can tell it
// received the pool its open-region reply described.
#ifndef SPARSEKV_COMMON_FD_PASSING_H_
#define SPARSEKV_COMMON_FD_PASSING_H_

#include <string>

#include "absl/status/statusor.h"

namespace sparsekv {

struct ReceivedFd {
  int fd = -1;
  std::string pool_uuid;
};

// Connects to `socket_path` and receives one descriptor. The caller owns the returned fd.
absl::StatusOr<ReceivedFd> ReceivePoolFd(const std::string& socket_path);

// Sends `fd` and `pool_uuid` to the peer on connected socket `conn`.
absl::Status SendPoolFd(int conn, int fd, const std::string& pool_uuid);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_FD_PASSING_H_
