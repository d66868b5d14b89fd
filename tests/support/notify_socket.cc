#include "tests/support/notify_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

namespace sparsekv::testing {

NotifySocket::NotifySocket(std::string path) : path_(std::move(path)) {
  sock_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  if (sock_ < 0 || bind(sock_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw std::runtime_error("cannot bind notify socket " + path_);
  }
}

NotifySocket::~NotifySocket() {
  if (stored_fd_ >= 0) close(stored_fd_);
  if (sock_ >= 0) close(sock_);
  unlink(path_.c_str());
}

bool NotifySocket::ReceiveOne(int timeout_ms) {
  pollfd p{sock_, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return false;
  char buf[4096];
  char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  iovec iov{buf, sizeof(buf)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(sock_, &msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) return false;
  std::string text(buf, static_cast<size_t>(n));
  received_ += text + "\n";
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_type != SCM_RIGHTS) continue;
    int fd;
    std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
    if (stored_fd_ < 0 && text.find("FDSTORE=1") != std::string::npos) stored_fd_ = fd;
    else close(fd);
  }
  return true;
}

void NotifySocket::Receive(int ms) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < until) ReceiveOne(20);
}

bool NotifySocket::ReceiveUntil(const std::string& text, int ms) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (received_.find(text) == std::string::npos && std::chrono::steady_clock::now() < until) ReceiveOne(20);
  return received_.find(text) != std::string::npos;
}

}  // namespace sparsekv::testing
