// DaemonFixture starts the real sparsekvd binary on loopback (ephemeral port, private runtime
// directory, private memfd pool) and stops it with SIGTERM when the test ends.
//
// Tests talk to it through the real client library and the real sparsekvctl binary.
#ifndef SPARSEKV_TESTS_SUPPORT_DAEMON_FIXTURE_H_
#define SPARSEKV_TESTS_SUPPORT_DAEMON_FIXTURE_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "sparsekv/client.h"

namespace sparsekv::testing {

struct DaemonOptions {
  std::string pool_size = "64MiB";
  int64_t lease_ms = 10000;
  std::vector<std::string> extra_args;
  // NAME=VALUE pairs added to the daemon's environment; WATCHDOG_PID=self names the daemon.
  std::vector<std::string> env;
  // Use this config file (passed as --config; flags from the fixture still override it).
  std::string config_file;
  // Hand this descriptor to the daemon as systemd hands a stored pool descriptor back
  // (fd 3, LISTEN_FDS=1, LISTEN_FDNAMES=sparsekv-pool).
  int inherit_pool_fd = -1;
};

// GET http://127.0.0.1:PORT/PATH; returns the status code and body (status -1 if unreachable).
std::pair<int, std::string> HttpGet(int port, const std::string& path);

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs a command line through /bin/sh, capturing stdout and stderr.
CommandResult RunCommand(const std::string& command_line);

// A fresh temporary directory, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class DaemonFixture {
 public:
  explicit DaemonFixture(DaemonOptions options = {});
  ~DaemonFixture();

  const std::string& address() const { return address_; }        // 127.0.0.1:PORT
  std::string unix_address() const { return "unix:" + dir_.path() + "/control.sock"; }
  const std::string& runtime_dir() const { return dir_.path(); }
  pid_t pid() const { return pid_; }
  int metrics_port() const { return metrics_port_; }

  // The fixture's own client, connected on first use.
  Client& client();
  std::unique_ptr<Client> NewClient(ClientOptions options = {});

  // Runs sparsekvctl --server <this daemon> ARGS.
  CommandResult Ctl(const std::string& args) const;

  // SIGTERM and wait; returns the exit status (or 128+signal).
  int Stop();
  // Starts the daemon again with the same options (after Stop or Kill); the address may change.
  void Restart();
  DaemonOptions& options() { return options_; }
  // SIGKILL and wait.
  void Kill();
  std::string Log() const;

 private:
  void Start();

  DaemonOptions options_;
  TempDir dir_;
  pid_t pid_ = -1;
  std::string address_;
  int metrics_port_ = 0;
  std::unique_ptr<Client> client_;
};

std::string SparsekvdPath();
std::string SparsekvctlPath();

}  // namespace sparsekv::testing

#endif  // SPARSEKV_TESTS_SUPPORT_DAEMON_FIXTURE_H_
