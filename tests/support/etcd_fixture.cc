#include "tests/support/etcd_fixture.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/etcd.h"

namespace sparsekv::testing {

int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    throw std::runtime_error("no free loopback port");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

bool EtcdFixture::Installed() { return access(kPath, X_OK) == 0; }

EtcdFixture::EtcdFixture() {
  if (!Installed()) throw std::runtime_error("etcd-server is not installed (/usr/bin/etcd): apt-get install etcd-server");
  client_port_ = FreeLoopbackPort();
  peer_port_ = FreeLoopbackPort();
  endpoint_ = "127.0.0.1:" + std::to_string(client_port_);
  Start();
}

EtcdFixture::~EtcdFixture() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string EtcdFixture::Log() const {
  std::ifstream in(dir_.path() + "/etcd.log");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void EtcdFixture::Start() {
  const std::string client = "http://" + endpoint_;
  const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
  std::vector<std::string> args = {kPath,
                                   "--name", "sparsekv-test",
                                   "--data-dir", dir_.path() + "/data",
                                   "--listen-client-urls", client,
                                   "--advertise-client-urls", client,
                                   "--listen-peer-urls", peer,
                                   "--initial-advertise-peer-urls", peer,
                                   "--initial-cluster", "sparsekv-test=" + peer,
                                   "--heartbeat-interval", "50",
                                   "--election-timeout", "500"};
  const std::string log = dir_.path() + "/etcd.log";
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    FILE* f = freopen(log.c_str(), "a", stderr);
    (void)f;
    f = freopen("/dev/null", "w", stdout);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  EtcdClient probe({endpoint_}, 500);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  absl::Status last;
  while (std::chrono::steady_clock::now() < deadline) {
    auto got = probe.Get("/probe");
    if (got.ok()) return;
    last = got.status();
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("etcd exited during start-up:\n" + Log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("etcd did not answer within 30 s (" + last.ToString() + "):\n" + Log());
}

void EtcdFixture::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

}  // namespace sparsekv::testing
