#include "client/transports/tcp_gather_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/gather_protocol.h"

namespace sparsekv {
namespace {

using Clock = std::chrono::steady_clock;

// Waits for `events` on fd until the deadline. OK, or DEADLINE_EXCEEDED.
absl::Status WaitFor(int fd, short events, Clock::time_point deadline, const std::string& what) {
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return absl::DeadlineExceededError(absl::StrFormat("%s timed out", what));
    pollfd p{fd, events, 0};
    int r = poll(&p, 1, static_cast<int>(left));
    if (r > 0) return absl::OkStatus();
    if (r < 0 && errno != EINTR) return absl::UnavailableError(absl::StrFormat("%s: %s", what, std::strerror(errno)));
  }
}

absl::Status SendAll(int fd, std::vector<iovec> iov, Clock::time_point deadline, const std::string& what) {
  size_t at = 0;
  while (at < iov.size()) {
    if (auto s = WaitFor(fd, POLLOUT, deadline, what); !s.ok()) return s;
    msghdr msg{};
    msg.msg_iov = iov.data() + at;
    msg.msg_iovlen = std::min<size_t>(iov.size() - at, IOV_MAX);
    ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return absl::UnavailableError(absl::StrFormat("%s: %s", what, std::strerror(errno)));
    }
    AdvanceIov(iov, &at, static_cast<size_t>(w));
  }
  return absl::OkStatus();
}

absl::Status RecvAll(int fd, void* buf, size_t n, Clock::time_point deadline, const std::string& what) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    if (auto s = WaitFor(fd, POLLIN, deadline, what); !s.ok()) return s;
    ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (r <= 0) {
      return absl::UnavailableError(absl::StrFormat("%s: %s", what, r == 0 ? "the daemon closed the connection" : std::strerror(errno)));
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

}  // namespace

TcpGatherTransport::TcpGatherTransport(std::string host, int port, int64_t timeout_ms)
    : host_(std::move(host)), port_(port), timeout_ms_(timeout_ms) {}

TcpGatherTransport::~TcpGatherTransport() {
  absl::MutexLock lock(&mu_);
  for (int fd : idle_) close(fd);
}

absl::StatusOr<int> TcpGatherTransport::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      int fd = idle_.back();
      idle_.pop_back();
      return fd;
    }
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host_.c_str(), std::to_string(port_).c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrFormat("cannot resolve data address %s:%d", host_, port_));
  }
  int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int rc = fd < 0 ? -1 : connect(fd, found->ai_addr, found->ai_addrlen);
  int err = errno;
  freeaddrinfo(found);
  if (fd < 0) return absl::UnavailableError("socket failed");
  if (rc != 0 && err != EINPROGRESS) {
    close(fd);
    return absl::UnavailableError(absl::StrFormat("cannot connect to %s:%d: %s", host_, port_, std::strerror(err)));
  }
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  if (auto s = WaitFor(fd, POLLOUT, deadline, absl::StrFormat("connecting to %s:%d", host_, port_)); !s.ok()) {
    close(fd);
    return s;
  }
  int so_error = 0;
  socklen_t len = sizeof(so_error);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
  if (so_error != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrFormat("cannot connect to %s:%d: %s", host_, port_, std::strerror(so_error)));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

void TcpGatherTransport::Release(int fd) {
  absl::MutexLock lock(&mu_);
  idle_.push_back(fd);
}

absl::Status TcpGatherTransport::Call(uint32_t op, absl::Span<const int64_t> offsets, int32_t entry_bytes,
                                      const std::byte* payload, std::byte* reply_dst) {
  if (offsets.empty()) return absl::OkStatus();
  const uint64_t total = static_cast<uint64_t>(offsets.size()) * static_cast<uint64_t>(entry_bytes);
  if (offsets.size() > kGatherMaxRanges || total > kGatherMaxBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d entries (%d bytes) in one transfer; the tcp-gather limit is %d entries and %d bytes",
        offsets.size(), total, kGatherMaxRanges, kGatherMaxBytes));
  }
  auto fd = Acquire();
  if (!fd.ok()) return fd.status();
  const uint64_t id = next_id_++;
  const std::string what = absl::StrFormat("tcp-gather %s to %s:%d", op == 1 ? "read" : "write", host_, port_);
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  thread_local std::vector<GatherRange> ranges;
  ranges.resize(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) ranges[i] = {static_cast<uint64_t>(offsets[i]), static_cast<uint32_t>(entry_bytes), 0};
  GatherRequestHeader h{kGatherMagic, op, id, static_cast<uint32_t>(offsets.size()), 0};
  std::vector<iovec> iov = {{&h, sizeof(h)}, {ranges.data(), ranges.size() * sizeof(GatherRange)}};
  if (payload != nullptr) iov.push_back({const_cast<std::byte*>(payload), total});
  absl::Status status = SendAll(*fd, std::move(iov), deadline, what);
  GatherResponseHeader reply{};
  if (status.ok()) status = RecvAll(*fd, &reply, sizeof(reply), deadline, what);
  if (status.ok() && (reply.magic != kGatherMagic || reply.id != id)) {
    status = absl::DataLossError(absl::StrFormat("%s: reply does not match the request", what));
  }
  if (status.ok() && reply.status != static_cast<uint32_t>(GatherStatus::kOk)) {
    std::string message(std::min<uint64_t>(reply.payload_bytes, 4096), '\0');
    (void)RecvAll(*fd, message.data(), message.size(), deadline, what);
    close(*fd);  // stream position unknown past the message: do not reuse
    return absl::InvalidArgumentError(absl::StrFormat("%s refused: %s", what, message));
  }
  if (status.ok() && reply_dst != nullptr) {
    if (reply.payload_bytes != total) {
      status = absl::DataLossError(absl::StrFormat("%s: %d bytes announced, %d expected", what, reply.payload_bytes, total));
    } else {
      status = RecvAll(*fd, reply_dst, total, deadline, what);
    }
  }
  if (!status.ok()) {
    close(*fd);
    return status;
  }
  Release(*fd);
  return absl::OkStatus();
}

absl::Status TcpGatherTransport::Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes, std::byte* dst) {
  return Call(static_cast<uint32_t>(GatherOp::kRead), pool_offsets, entry_bytes, nullptr, dst);
}

absl::Status TcpGatherTransport::Scatter(const std::byte* src, int32_t entry_bytes, absl::Span<const int64_t> pool_offsets) {
  return Call(static_cast<uint32_t>(GatherOp::kWrite), pool_offsets, entry_bytes, src, nullptr);
}

}  // namespace sparsekv
