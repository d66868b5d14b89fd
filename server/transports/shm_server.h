// ShmServer is the server side of the shm/CXL transport: it hands the pool's descriptor to
// same-host clients over a Unix socket (SCM_RIGHTS), after which they read and write the pool
// with plain loads and stores and never involve the daemon again.
//
// Path-backed pools (file, hugetlbfs, devdax) need no socket: clients open the path. The socket
// file is created with mode 0660; who may map the pool is who may connect.
#ifndef SPARSEKV_SERVER_TRANSPORTS_SHM_SERVER_H_
#define SPARSEKV_SERVER_TRANSPORTS_SHM_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/pool.h"

namespace sparsekv {

class ShmServer {
 public:
  static absl::StatusOr<std::unique_ptr<ShmServer>> Start(const Pool* pool, std::string socket_path);
  // Serves one tenant arena's descriptor (`fd`, identified as `uuid`) instead of the pool's; the
  // socket gets `mode` and, when gid >= 0, that group.
  static absl::StatusOr<std::unique_ptr<ShmServer>> StartArena(const Pool* pool, std::string socket_path, int fd,
                                                               std::string uuid, int mode, int gid);
  ~ShmServer();  // stops serving and removes the socket file

  const std::string& socket_path() const { return socket_path_; }

 private:
  ShmServer() = default;
  void Serve();

  const Pool* pool_ = nullptr;
  int fd_ = -1;  // an arena's; -1: the pool's
  std::string uuid_;
  std::string socket_path_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  std::thread thread_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_TRANSPORTS_SHM_SERVER_H_
