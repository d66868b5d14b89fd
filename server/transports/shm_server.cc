#include "server/transports/shm_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/fd_passing.h"
#include "common/log.h"

namespace sparsekv {

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::Start(const Pool* pool, std::string socket_path) {
  std::unique_ptr<ShmServer> server(new ShmServer());
  server->pool_ = pool;
  server->socket_path_ = std::move(socket_path);
  sockaddr_un addr{};
  if (server->socket_path_.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("pool socket path '%s' is longer than %d bytes", server->socket_path_,
                        sizeof(addr.sun_path) - 1));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrFormat("socket: %s", std::strerror(errno)));
  unlink(server->socket_path_.c_str());
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, server->socket_path_.data(), server->socket_path_.size());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 64) != 0) {
    int err = errno;
    close(fd);
    return absl::FailedPreconditionError(absl::StrFormat("cannot listen on pool socket %s: %s",
                                                         server->socket_path_, std::strerror(err)));
  }
  chmod(server->socket_path_.c_str(), 0660);
  server->listen_fd_ = fd;
  if (pipe2(server->wake_pipe_, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrFormat("pipe: %s", std::strerror(errno)));
  }
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::StartArena(const Pool* pool, std::string socket_path, int fd,
                                                                 std::string uuid, int mode, int gid) {
  auto server = Start(pool, socket_path);
  if (!server.ok()) return server.status();
  (*server)->fd_ = fd;
  (*server)->uuid_ = std::move(uuid);
  if (chmod(socket_path.c_str(), static_cast<mode_t>(mode)) != 0 ||
      (gid >= 0 && chown(socket_path.c_str(), static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0)) {
    return absl::PermissionDeniedError(absl::StrFormat("arena socket %s: cannot set mode %04o / group %d: %s",
                                                       socket_path, mode, gid, std::strerror(errno)));
  }
  return server;
}

void ShmServer::Serve() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      SKV_LOG_ERROR("shm", "poll on pool socket failed: %s", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    if (auto s = SendPoolFd(conn, fd_ >= 0 ? fd_ : pool_->fd(), fd_ >= 0 ? uuid_ : pool_->uuid()); !s.ok()) {
      SKV_LOG_WARN("shm", "%s", s.message());
    }
    close(conn);
  }
}

ShmServer::~ShmServer() {
  if (wake_pipe_[1] >= 0) {
    char c = 0;
    (void)!write(wake_pipe_[1], &c, 1);
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  for (int fd : wake_pipe_) if (fd >= 0) close(fd);
  unlink(socket_path_.c_str());
}

}  // namespace sparsekv
