#include "tests/support/daemon_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace sparsekv::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

namespace {
// The build tree's binary, or (for an installed sparsekv-bench) the one next to this program.
std::string BinaryPath(const std::string& built, const std::string& name) {
  if (std::filesystem::exists(built)) return built;
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec && std::filesystem::exists(self.parent_path() / name)) return (self.parent_path() / name).string();
  return built;
}
}  // namespace

std::string SparsekvdPath() { return BinaryPath(SPARSEKVD_PATH, "sparsekvd"); }
std::string SparsekvctlPath() { return BinaryPath(SPARSEKVCTL_PATH, "sparsekvctl"); }

std::pair<int, std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return {-1, ""};
  }
  std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  close(fd);
  int status = -1;
  if (response.rfind("HTTP/", 0) == 0) status = std::atoi(response.c_str() + response.find(' ') + 1);
  auto body = response.find("\r\n\r\n");
  return {status, body == std::string::npos ? "" : response.substr(body + 4)};
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/sparsekv-test.XXXXXX";
  char* made = mkdtemp(tmpl);
  if (made == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CommandResult RunCommand(const std::string& command_line) {
  TempDir dir;
  std::string out = dir.path() + "/out", err = dir.path() + "/err";
  std::string full = command_line + " >" + out + " 2>" + err;
  int status = std::system(full.c_str());
  CommandResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = ReadFile(out);
  result.err = ReadFile(err);
  return result;
}

DaemonFixture::DaemonFixture(DaemonOptions options) : options_(std::move(options)) { Start(); }

void DaemonFixture::Restart() {
  client_.reset();
  if (pid_ > 0) Stop();
  Start();
}

void DaemonFixture::Start() {
  const DaemonOptions& options = options_;
  std::string ready = dir_.path() + "/ready.json";
  std::filesystem::remove(ready);
  // A restart keeps the port, as a real deployment's fixed port would.
  std::vector<std::string> args = {SparsekvdPath(),
                                   "--listen", address_.empty() ? "127.0.0.1:0" : address_,
                                   "--pool-size", options.pool_size,
                                   "--runtime-dir", dir_.path(),
                                   "--ready-file", ready,
                                   "--metrics-listen", "127.0.0.1:0",
                                   "--lease-ms", std::to_string(options.lease_ms),
                                   "--reap-interval-ms", std::to_string(std::min<int64_t>(100, options.lease_ms / 4))};
  if (!options.config_file.empty()) {
    args.push_back("--config");
    args.push_back(options.config_file);
  }
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  std::string log = dir_.path() + "/sparsekvd.log";
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test (or fuzzer) that crashes leaves no daemon behind
    FILE* f = freopen(log.c_str(), "a", stderr);
    (void)f;
    if (options.inherit_pool_fd >= 0) {
      dup2(options.inherit_pool_fd, 3);
      setenv("LISTEN_FDS", "1", 1);
      setenv("LISTEN_FDNAMES", "sparsekv-pool", 1);
      setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    }
    for (const auto& kv : options.env) {
      auto eq = kv.find('=');
      std::string name = kv.substr(0, eq), value = kv.substr(eq + 1);
      if (value == "self") value = std::to_string(getpid());
      setenv(name.c_str(), value.c_str(), 1);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (std::filesystem::exists(ready)) {
      std::string text = ReadFile(ready);
      auto at = text.find("\"port\":");
      address_ = "127.0.0.1:" + std::to_string(std::atoi(text.c_str() + at + 7));
      auto metrics_at = text.find("\"metrics_port\":");
      if (metrics_at != std::string::npos) metrics_port_ = std::atoi(text.c_str() + metrics_at + 15);
      return;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("sparsekvd exited during start-up:\n" + ReadFile(log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill();
  throw std::runtime_error("sparsekvd did not become ready in 120 s:\n" + ReadFile(log));
}

DaemonFixture::~DaemonFixture() {
  client_.reset();
  if (pid_ > 0) Stop();
}

Client& DaemonFixture::client() {
  if (!client_) client_ = NewClient();
  return *client_;
}

std::unique_ptr<Client> DaemonFixture::NewClient(ClientOptions options) {
  options.server = address_;
  auto client = Client::Connect(options);
  if (!client.ok()) throw std::runtime_error("connect: " + client.status().ToString() + "\n" + Log());
  return *std::move(client);
}

CommandResult DaemonFixture::Ctl(const std::string& args) const {
  return RunCommand(SparsekvctlPath() + " --server " + address_ + " " + args);
}

int DaemonFixture::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void DaemonFixture::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::string DaemonFixture::Log() const { return ReadFile(dir_.path() + "/sparsekvd.log"); }

}  // namespace sparsekv::testing
