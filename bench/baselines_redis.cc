#include "bench/baselines_redis.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sparsekv::bench {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string Bulk(std::string_view s) {
  std::string out = absl::StrCat("$", s.size(), "\r\n");
  out.append(s.data(), s.size());
  out += "\r\n";
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisBaseline>> RedisBaseline::Start() {
  if (!std::filesystem::exists("/usr/bin/redis-server")) {
    return absl::UnavailableError("redis-server is not installed (Debian package redis-server)");
  }
  std::unique_ptr<RedisBaseline> redis(new RedisBaseline());
  char tmpl[] = "/tmp/sparsekv-redis.XXXXXX";
  redis->dir_ = mkdtemp(tmpl);
  const int port = FreePort();
  redis->pid_ = fork();
  if (redis->pid_ == 0) {
    FILE* f = freopen("/dev/null", "w", stdout);
    (void)f;
    std::string port_text = std::to_string(port);
    execl("/usr/bin/redis-server", "redis-server", "--port", port_text.c_str(), "--bind", "127.0.0.1",
          "--save", "", "--appendonly", "no", "--dir", redis->dir_.c_str(), "--protected-mode", "no", nullptr);
    _exit(127);
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int attempt = 0; attempt < 200; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      redis->fd_ = fd;
      return redis;
    }
    close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return absl::UnavailableError(absl::StrFormat("redis-server did not accept connections on port %d", port));
}

RedisBaseline::~RedisBaseline() {
  if (fd_ >= 0) close(fd_);
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

absl::Status RedisBaseline::SendAll(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (w <= 0) return absl::UnavailableError("redis: send failed");
    done += static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status RedisBaseline::ReadExact(char* out, size_t n) {
  while (n > 0) {
    if (buffer_at_ == buffer_.size()) {
      buffer_.resize(1 << 20);
      ssize_t r = recv(fd_, buffer_.data(), buffer_.size(), 0);
      if (r <= 0) return absl::UnavailableError("redis: connection closed");
      buffer_.resize(static_cast<size_t>(r));
      buffer_at_ = 0;
    }
    size_t take = std::min(n, buffer_.size() - buffer_at_);
    if (out != nullptr) {
      std::memcpy(out, buffer_.data() + buffer_at_, take);
      out += take;
    }
    buffer_at_ += take;
    n -= take;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RedisBaseline::ReadLine() {
  std::string line;
  char c;
  while (true) {
    if (auto s = ReadExact(&c, 1); !s.ok()) return s;
    if (c == '\n') break;
    if (c != '\r') line.push_back(c);
  }
  return line;
}

absl::Status RedisBaseline::Load(int32_t layer, const std::vector<int32_t>& tokens, const std::vector<std::byte>& values,
                                 int32_t entry_bytes) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t chunk = 1000;
  for (int64_t start = 0; start < n; start += chunk) {
    std::string out;
    int64_t end = std::min(n, start + chunk);
    for (int64_t t = start; t < end; ++t) {
      absl::StrAppend(&out, "*3\r\n", Bulk("SET"), Bulk(absl::StrCat(layer, ":", tokens[t])),
                      Bulk(std::string_view(reinterpret_cast<const char*>(values.data() + t * entry_bytes), entry_bytes)));
    }
    if (auto s = SendAll(out); !s.ok()) return s;
    for (int64_t t = start; t < end; ++t) {
      auto line = ReadLine();
      if (!line.ok()) return line.status();
      if (*line != "+OK") return absl::InternalError(absl::StrCat("redis SET: ", *line));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RedisBaseline::MGet(int32_t layer, const std::vector<int32_t>& indices, int32_t entry_bytes,
                                            std::byte* dst) {
  std::string out = absl::StrCat("*", indices.size() + 1, "\r\n", Bulk("MGET"));
  for (int32_t t : indices) out += Bulk(absl::StrCat(layer, ":", t));
  if (auto s = SendAll(out); !s.ok()) return s;
  auto header = ReadLine();
  if (!header.ok()) return header.status();
  if (header->empty() || (*header)[0] != '*') return absl::InternalError(absl::StrCat("redis MGET: ", *header));
  int64_t received = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    auto bulk = ReadLine();
    if (!bulk.ok()) return bulk.status();
    int64_t len = std::atoll(bulk->c_str() + 1);
    if (len != entry_bytes) return absl::DataLossError(absl::StrFormat("redis MGET: key %d:%d has %d bytes", layer, indices[i], len));
    if (auto s = ReadExact(reinterpret_cast<char*>(dst + i * entry_bytes), static_cast<size_t>(len)); !s.ok()) return s;
    if (auto s = ReadExact(nullptr, 2); !s.ok()) return s;
    received += len;
  }
  return received;
}

}  // namespace sparsekv::bench
