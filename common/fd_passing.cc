#include "common/fd_passing.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

namespace sparsekv {

absl::Status SendPoolFd(int conn, int fd, const std::string& pool_uuid) {
  char control[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{const_cast<char*>(pool_uuid.data()), pool_uuid.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  if (sendmsg(conn, &msg, MSG_NOSIGNAL) < 0) {
    return absl::UnavailableError(absl::StrFormat("sending the pool fd: %s", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReceivedFd> ReceivePoolFd(const std::string& socket_path) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat("socket path '%s' is too long", socket_path));
  }
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return absl::InternalError(absl::StrFormat("socket: %s", std::strerror(errno)));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    close(sock);
    return absl::UnavailableError(absl::StrFormat(
        "cannot reach the pool descriptor socket %s: %s (the daemon is on another host, or "
        "this user may not use it)", socket_path, std::strerror(err)));
  }
  timeval timeout{5, 0};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  char uuid[128];
  char control[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{uuid, sizeof(uuid)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  int err = errno;
  close(sock);
  if (n <= 0) {
    return absl::UnavailableError(absl::StrFormat("no pool descriptor from %s: %s", socket_path,
                                                  n == 0 ? "connection closed" : std::strerror(err)));
  }
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  if (cmsg == nullptr || cmsg->cmsg_type != SCM_RIGHTS) {
    return absl::DataLossError(absl::StrFormat("%s sent no descriptor", socket_path));
  }
  ReceivedFd out;
  std::memcpy(&out.fd, CMSG_DATA(cmsg), sizeof(int));
  out.pool_uuid.assign(uuid, n);
  return out;
}

}  // namespace sparsekv
