#include "server/transports/tcp_gather_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "absl/strings/str_format.h"
#include "common/gather_protocol.h"
#include "common/ipv4_listen.h"
#include "common/log.h"

namespace sparsekv {
namespace {

bool ReadFull(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteVec(int fd, std::vector<iovec>& iov) {
  size_t at = 0;
  while (at < iov.size()) {
    int count = static_cast<int>(std::min<size_t>(iov.size() - at, IOV_MAX));
    ssize_t w = writev(fd, iov.data() + at, count);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    AdvanceIov(iov, &at, static_cast<size_t>(w));
  }
  return true;
}

bool SendError(int fd, uint64_t id, const std::string& message, GatherStatus status = GatherStatus::kBadRequest) {
  GatherResponseHeader h{kGatherMagic, static_cast<uint32_t>(status), id, message.size()};
  std::vector<iovec> iov = {{&h, sizeof(h)}, {const_cast<char*>(message.data()), message.size()}};
  return WriteVec(fd, iov);
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpGatherServer>> TcpGatherServer::Start(Pool* pool, const std::string& listen,
                                                                        WriteGate* gate) {
  auto parsed = ParseIpv4Listen(listen, "listen.data", "127.0.0.1:7371");
  if (!parsed.ok()) return parsed.status();
  sockaddr_in addr = *parsed;
  std::unique_ptr<TcpGatherServer> server(new TcpGatherServer());
  server->pool_ = pool;
  server->gate_ = gate;
  server->host_ = listen.substr(0, listen.rfind(':'));
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 128) != 0) {
    int err = errno;
    if (fd >= 0) close(fd);
    return absl::FailedPreconditionError(absl::StrFormat("cannot listen for data on %s: %s", listen, std::strerror(err)));
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  server->port_ = ntohs(addr.sin_port);
  server->listen_fd_ = fd;
  if (pipe2(server->wake_pipe_, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

void TcpGatherServer::RequireSecrets() {
  absl::MutexLock lock(&arena_mu_);
  require_secret_ = true;
}

uint64_t TcpGatherServer::AddArena(uint64_t begin, uint64_t end) {
  absl::MutexLock lock(&arena_mu_);
  require_secret_ = true;
  std::random_device rd;
  uint64_t secret = 0;
  while (secret == 0 || arenas_.contains(secret)) secret = (uint64_t{rd()} << 32) ^ rd();
  arenas_[secret] = {begin, end};
  return secret;
}

void TcpGatherServer::AcceptLoop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    int one = 1;
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    absl::MutexLock lock(&mu_);
    if (stopping_ || connections_.size() >= 1024) {
      close(conn);
      continue;
    }
    connections_.push_back(conn);
    ++active_;
    std::thread([this, conn] { Serve(conn); }).detach();
  }
}

void TcpGatherServer::Serve(int fd) {
  std::vector<GatherRange> ranges;
  std::vector<iovec> iov;
  std::vector<std::byte> payload;  // a write's bytes, applied only once all of them arrived
  const uint64_t pool_bytes = static_cast<uint64_t>(pool_->size_bytes());
  while (true) {
    GatherRequestHeader h;
    if (!ReadFull(fd, &h, sizeof(h))) break;
    if (h.magic != kGatherMagic || h.count > kGatherMaxRanges) {
      SendError(fd, h.id, absl::StrFormat("bad request header (magic %08x, %d ranges; at most %d)", h.magic, h.count,
                                          kGatherMaxRanges));
      break;  // the stream cannot be trusted any more
    }
    ranges.resize(h.count);
    if (h.count > 0 && !ReadFull(fd, ranges.data(), h.count * sizeof(GatherRange))) break;
    uint64_t total = 0;
    std::string problem;
    uint64_t lo = 0, hi = pool_bytes;
    {
      absl::ReaderMutexLock lock(&arena_mu_);
      if (require_secret_) {
        auto arena = arenas_.find(h.secret);
        if (arena == arenas_.end()) {
          problem = "the request names no arena of this daemon (wrong or missing gather secret)";
        } else {
          lo = arena->second.first;
          hi = arena->second.second;
        }
      }
    }
    for (uint32_t i = 0; i < h.count && problem.empty(); ++i) {
      const GatherRange& r = ranges[i];
      if (r.offset < lo || r.offset > hi || r.bytes > hi - r.offset) {
        problem = absl::StrFormat("range %d [%d, +%d) is outside the arena [%d, %d) this request may touch", i,
                                  r.offset, r.bytes, lo, hi);
      }
      total += r.bytes;
    }
    if (problem.empty() && total > kGatherMaxBytes) {
      problem = absl::StrFormat("request of %d bytes exceeds the %d-byte limit", total, kGatherMaxBytes);
    }
    if (h.op == static_cast<uint32_t>(GatherOp::kWrite)) {
      if (!problem.empty()) {  // the payload cannot be skipped safely: answer and drop the connection
        SendError(fd, h.id, problem);
        break;
      }
      // The whole payload first, then every range checked and applied under the write gate:
      // a write to a sealed region is refused whole, and a torn connection applies nothing.
      payload.resize(total);
      if (total > 0 && !ReadFull(fd, payload.data(), total)) break;
      absl::Status applied =
          gate_ == nullptr ? absl::FailedPreconditionError("this daemon takes no writes on its tcp-gather path")
                           : gate_->Write(pool_->base(), ranges, payload.data());
      if (payload.capacity() > (size_t{64} << 20)) std::vector<std::byte>().swap(payload);
      if (!applied.ok()) {
        if (!SendError(fd, h.id, std::string(applied.message()), GatherStatus::kRefused)) break;
        continue;
      }
      GatherResponseHeader reply{kGatherMagic, static_cast<uint32_t>(GatherStatus::kOk), h.id, 0};
      iov = {{&reply, sizeof(reply)}};
      if (!WriteVec(fd, iov)) break;
      continue;
    }
    if (h.op != static_cast<uint32_t>(GatherOp::kRead)) problem = absl::StrFormat("unknown op %d", h.op);
    if (!problem.empty()) {
      if (!SendError(fd, h.id, problem)) break;
      continue;
    }
    // One reply, gathered straight from pool memory: no intermediate copy.
    GatherResponseHeader reply{kGatherMagic, static_cast<uint32_t>(GatherStatus::kOk), h.id, total};
    iov.clear();
    iov.push_back({&reply, sizeof(reply)});
    for (const GatherRange& r : ranges) iov.push_back({pool_->base() + r.offset, r.bytes});
    if (!WriteVec(fd, iov)) break;
  }
  absl::MutexLock lock(&mu_);
  close(fd);
  connections_.erase(std::remove(connections_.begin(), connections_.end(), fd), connections_.end());
  --active_;
}

TcpGatherServer::~TcpGatherServer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (int fd : connections_) shutdown(fd, SHUT_RDWR);  // wakes their threads
  }
  char c = 0;
  (void)!write(wake_pipe_[1], &c, 1);
  if (acceptor_.joinable()) acceptor_.join();
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](int* active) { return *active == 0; }, &active_));
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  for (int fd : wake_pipe_) if (fd >= 0) close(fd);
}

}  // namespace sparsekv
