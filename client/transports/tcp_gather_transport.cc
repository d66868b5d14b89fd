#include "client/transports/tcp_gather_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
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

TcpGatherTransport::TcpGatherTransport(std::string host, int port, int64_t timeout_ms, int connections, uint64_t secret)
    : host_(std::move(host)), port_(port), timeout_ms_(timeout_ms), connections_(std::max(1, connections)), secret_(secret) {}

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

absl::Status TcpGatherTransport::Write(absl::Span<const int64_t> offsets, int32_t entry_bytes,
                                       const std::byte* payload) {
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
  const std::string what = absl::StrFormat("tcp-gather write to %s:%d", host_, port_);
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  thread_local std::vector<GatherRange> ranges;
  ranges.resize(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) ranges[i] = {static_cast<uint64_t>(offsets[i]), static_cast<uint32_t>(entry_bytes), 0};
  GatherRequestHeader h{kGatherMagic, static_cast<uint32_t>(GatherOp::kWrite), id,
                        static_cast<uint32_t>(offsets.size()), 0, secret_};
  std::vector<iovec> iov = {{&h, sizeof(h)},
                            {ranges.data(), ranges.size() * sizeof(GatherRange)},
                            {const_cast<std::byte*>(payload), total}};
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
    if (reply.status == static_cast<uint32_t>(GatherStatus::kRefused)) {
      return absl::FailedPreconditionError(absl::StrFormat("%s refused: %s", what, message));
    }
    return absl::InvalidArgumentError(absl::StrFormat("%s refused: %s", what, message));
  }
  if (!status.ok()) {
    close(*fd);
    return status;
  }
  Release(*fd);
  return absl::OkStatus();
}

absl::Status TcpGatherTransport::Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes, std::byte* dst) {
  GatherWork one{pool_offsets, entry_bytes, dst};
  return GatherBatch(absl::MakeConstSpan(&one, 1));
}

namespace {

// One request of a batch: its ranges and where their bytes land.
struct BatchRequest {
  std::vector<GatherRange> ranges;
  std::vector<iovec> dst;  // contiguous pieces of the callers' buffers, in range order
  uint64_t bytes = 0;
  size_t first_item = 0;
};

// One connection working through its share of the requests.
struct BatchStream {
  int fd = -1;
  std::vector<size_t> requests;
  size_t next = 0;  // requests[next] is in progress
  enum class Phase { kSend, kHeader, kPayload, kDone } phase = Phase::kSend;
  GatherRequestHeader header{};
  std::vector<iovec> send_iov;
  size_t send_at = 0;
  GatherResponseHeader reply{};
  size_t reply_got = 0;
  std::vector<iovec> recv_iov;
  size_t recv_at = 0;
};

}  // namespace

absl::Status TcpGatherTransport::GatherBatch(absl::Span<const GatherWork> work) {
  uint64_t total = 0;
  for (const GatherWork& w : work) total += w.offsets.size() * static_cast<uint64_t>(w.entry_bytes);
  if (total == 0) return absl::OkStatus();
  // Requests of about total / connections bytes (at least 256 KiB, at most 64 MiB), cut
  // anywhere, even inside an item.
  const uint64_t target = std::clamp<uint64_t>((total + connections_ - 1) / connections_, uint64_t{256} << 10,
                                               uint64_t{64} << 20);
  std::vector<BatchRequest> requests(1);
  for (size_t i = 0; i < work.size(); ++i) {
    const GatherWork& w = work[i];
    const uint32_t eb = static_cast<uint32_t>(w.entry_bytes);
    for (size_t e = 0; e < w.offsets.size(); ++e) {
      BatchRequest* r = &requests.back();
      if (r->bytes + eb > target || r->ranges.size() >= kGatherMaxRanges) {
        requests.emplace_back();
        r = &requests.back();
      }
      if (r->ranges.empty()) r->first_item = i;
      r->ranges.push_back({static_cast<uint64_t>(w.offsets[e]), eb, 0});
      std::byte* to = w.dst + e * eb;
      if (!r->dst.empty() && static_cast<std::byte*>(r->dst.back().iov_base) + r->dst.back().iov_len == to) {
        r->dst.back().iov_len += eb;
      } else {
        r->dst.push_back({to, eb});
      }
      r->bytes += eb;
    }
  }
  const size_t used = std::min<size_t>(static_cast<size_t>(connections_), requests.size());
  std::vector<BatchStream> streams(used);
  for (size_t r = 0; r < requests.size(); ++r) streams[r % used].requests.push_back(r);
  const std::string what = absl::StrFormat("tcp-gather read from %s:%d", host_, port_);
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  absl::Status status;
  auto start = [&](BatchStream& s) {
    if (s.next >= s.requests.size()) {
      s.phase = BatchStream::Phase::kDone;
      return;
    }
    BatchRequest& r = requests[s.requests[s.next]];
    s.header = {kGatherMagic, static_cast<uint32_t>(GatherOp::kRead), next_id_++, static_cast<uint32_t>(r.ranges.size()), 0,
                secret_};
    s.send_iov = {{&s.header, sizeof(s.header)}, {r.ranges.data(), r.ranges.size() * sizeof(GatherRange)}};
    s.send_at = 0;
    s.reply_got = 0;
    s.recv_iov = r.dst;
    s.recv_at = 0;
    s.phase = BatchStream::Phase::kSend;
  };
  for (BatchStream& s : streams) {
    auto fd = Acquire();
    if (!fd.ok()) {
      status = fd.status();
      break;
    }
    s.fd = *fd;
    start(s);
  }
  // Step one stream as far as it goes without blocking. False: failed, `status` says why.
  auto step = [&](BatchStream& s, short revents) -> bool {
    if (s.phase == BatchStream::Phase::kSend && (revents & (POLLOUT | POLLERR | POLLHUP))) {
      msghdr msg{};
      msg.msg_iov = s.send_iov.data() + s.send_at;
      msg.msg_iovlen = std::min<size_t>(s.send_iov.size() - s.send_at, IOV_MAX);
      ssize_t w = sendmsg(s.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && errno != EAGAIN && errno != EINTR) {
        status = absl::UnavailableError(absl::StrFormat("%s: %s", what, std::strerror(errno)));
        return false;
      }
      if (w > 0) AdvanceIov(s.send_iov, &s.send_at, static_cast<size_t>(w));
      if (s.send_at == s.send_iov.size()) s.phase = BatchStream::Phase::kHeader;
    }
    if (!(revents & (POLLIN | POLLERR | POLLHUP))) return true;
    while (s.phase == BatchStream::Phase::kHeader || s.phase == BatchStream::Phase::kPayload) {
      ssize_t r;
      if (s.phase == BatchStream::Phase::kHeader) {
        r = recv(s.fd, reinterpret_cast<char*>(&s.reply) + s.reply_got, sizeof(s.reply) - s.reply_got, MSG_DONTWAIT);
      } else {
        msghdr msg{};
        msg.msg_iov = s.recv_iov.data() + s.recv_at;
        msg.msg_iovlen = std::min<size_t>(s.recv_iov.size() - s.recv_at, IOV_MAX);
        r = recvmsg(s.fd, &msg, MSG_DONTWAIT);
      }
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) return true;
      if (r <= 0) {
        status = absl::UnavailableError(
            absl::StrFormat("%s: %s", what, r == 0 ? "the daemon closed the connection" : std::strerror(errno)));
        return false;
      }
      if (s.phase == BatchStream::Phase::kHeader) {
        s.reply_got += static_cast<size_t>(r);
        if (s.reply_got < sizeof(s.reply)) continue;
        const BatchRequest& req = requests[s.requests[s.next]];
        if (s.reply.magic != kGatherMagic || s.reply.id != s.header.id) {
          status = absl::DataLossError(absl::StrFormat("%s: reply does not match the request", what));
          return false;
        }
        if (s.reply.status != static_cast<uint32_t>(GatherStatus::kOk)) {
          std::string message(std::min<uint64_t>(s.reply.payload_bytes, 4096), '\0');
          (void)RecvAll(s.fd, message.data(), message.size(), deadline, what);
          status = absl::InvalidArgumentError(absl::StrFormat("%s refused (batch item %d onwards): %s", what,
                                                              req.first_item, message));
          return false;
        }
        if (s.reply.payload_bytes != req.bytes) {
          status = absl::DataLossError(
              absl::StrFormat("%s: %d bytes announced, %d expected", what, s.reply.payload_bytes, req.bytes));
          return false;
        }
        s.phase = BatchStream::Phase::kPayload;
      } else {
        AdvanceIov(s.recv_iov, &s.recv_at, static_cast<size_t>(r));
      }
      if (s.phase == BatchStream::Phase::kPayload && s.recv_at == s.recv_iov.size()) {
        ++s.next;
        start(s);
        return true;  // the next request needs POLLOUT first
      }
    }
    return true;
  };
  std::vector<pollfd> fds;
  std::vector<BatchStream*> polled;
  while (status.ok()) {
    fds.clear();
    polled.clear();
    for (BatchStream& s : streams) {
      if (s.phase == BatchStream::Phase::kDone) continue;
      fds.push_back({s.fd, static_cast<short>(s.phase == BatchStream::Phase::kSend ? POLLOUT | POLLIN : POLLIN), 0});
      polled.push_back(&s);
    }
    if (fds.empty()) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      status = absl::DeadlineExceededError(absl::StrFormat("%s timed out after %d ms", what, timeout_ms_));
      break;
    }
    int n = poll(fds.data(), fds.size(), static_cast<int>(left));
    if (n < 0 && errno != EINTR) {
      status = absl::UnavailableError(absl::StrFormat("%s: poll: %s", what, std::strerror(errno)));
      break;
    }
    for (size_t i = 0; i < fds.size() && status.ok(); ++i) {
      if (fds[i].revents != 0) step(*polled[i], fds[i].revents);
    }
  }
  for (BatchStream& s : streams) {
    if (s.fd < 0) continue;
    if (status.ok()) {
      Release(s.fd);
    } else {
      close(s.fd);  // a half-read stream is never reused
    }
  }
  return status;
}

absl::Status TcpGatherTransport::Scatter(const std::byte* src, int32_t entry_bytes, absl::Span<const int64_t> pool_offsets) {
  // In requests within the protocol's limits; each is acknowledged only once its bytes are in
  // pool memory, so a commit sent after Scatter returns covers bytes that are there.
  const size_t per_request = std::max<size_t>(
      1, std::min<size_t>(kGatherMaxRanges, kGatherMaxBytes / static_cast<size_t>(std::max(entry_bytes, 1))));
  for (size_t at = 0; at < pool_offsets.size(); at += per_request) {
    const size_t n = std::min(per_request, pool_offsets.size() - at);
    if (auto st = Write(pool_offsets.subspan(at, n), entry_bytes, src + at * static_cast<size_t>(entry_bytes)); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace sparsekv
