// TcpGatherServer is the server side of the "tcp-gather" transport: it answers each request
// (the byte ranges of a whole fetch) with one reply gathered straight from pool memory with
// writev, and applies write requests to the pool. A thread per connection; requests on one
// connection are served in order.
//
// Ranges are checked against the pool's bounds (and a tenant's arena); a bad request gets an
// error reply and the connection stays usable. Writes are read whole, then applied through the
// WriteGate: only pages of unsealed regions take writes, all ranges or none.
#ifndef SPARSEKV_SERVER_TRANSPORTS_TCP_GATHER_SERVER_H_
#define SPARSEKV_SERVER_TRANSPORTS_TCP_GATHER_SERVER_H_

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/pool.h"
#include "server/write_gate.h"

namespace sparsekv {

class TcpGatherServer {
 public:
  // `listen` is "IPV4:PORT"; port 0 picks one.
  // `gate` decides which pages writes may touch (it must outlive the server).
  static absl::StatusOr<std::unique_ptr<TcpGatherServer>> Start(Pool* pool, const std::string& listen,
                                                                WriteGate* gate);
  ~TcpGatherServer();  // closes every connection and joins the threads

  int port() const { return port_; }
  const std::string& host() const { return host_; }
  // From now on every request must carry the secret of an arena (AddArena) and stays inside it;
  // before, requests may touch the whole pool. Call right after Start when the pool has arenas.
  void RequireSecrets();
  // Registers an arena: requests carrying `secret` may touch pool bytes [begin, end) only.
  // Returns the secret (random, never 0).
  uint64_t AddArena(uint64_t begin, uint64_t end);

 private:
  TcpGatherServer() = default;
  void AcceptLoop();
  void Serve(int fd);

  Pool* pool_ = nullptr;
  WriteGate* gate_ = nullptr;
  absl::Mutex arena_mu_;
  bool require_secret_ ABSL_GUARDED_BY(arena_mu_) = false;
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> arenas_ ABSL_GUARDED_BY(arena_mu_);  // secret -> [begin, end)
  std::string host_;
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<int> connections_ ABSL_GUARDED_BY(mu_);
  int active_ ABSL_GUARDED_BY(mu_) = 0;  // connection threads still running (detached)
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_TRANSPORTS_TCP_GATHER_SERVER_H_
