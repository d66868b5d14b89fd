// Daemon::Main: the command line, the order of the start-up steps, serving, shutdown.
#include "server/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <systemd/sd-daemon.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/size_parse.h"
#include "common/version.h"

namespace sparsekv {
namespace {

std::string DefaultRuntimeDir() {
  if (geteuid() == 0) return "/run/sparsekvd";
  if (const char* xdg = getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return absl::StrCat(xdg, "/sparsekvd");
  }
  return absl::StrFormat("/tmp/sparsekvd-%d", geteuid());
}

absl::Status MakeDirs(const std::string& path) {
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0750) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(
          absl::StrFormat("cannot create runtime directory %s: %s", prefix, std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteReadyFile(const std::string& path, int port, const std::string& unix_socket,
                            const std::string& pool_socket, int metrics_port, int data_port) {
  std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp);
    out << absl::StrFormat(
        "{\"port\":%d,\"unix_socket\":\"%s\",\"pool_socket\":\"%s\",\"metrics_port\":%d,\"data_port\":%d,\"pid\":%d}\n",
        port, unix_socket, pool_socket, metrics_port, data_port, getpid());
    if (!out) return absl::FailedPreconditionError(absl::StrCat("cannot write ready file ", tmp));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot rename ready file to ", path));
  }
  return absl::OkStatus();
}

}  // namespace

void Notify(const std::string& state) { sd_notify(0, state.c_str()); }
void NotifyStatus(const std::string& status) { Notify(absl::StrCat("STATUS=", status)); }

int Daemon::Main(int argc, char** argv) {
  Daemon d;
  sigemptyset(&d.signals_);
  sigaddset(&d.signals_, SIGTERM);
  sigaddset(&d.signals_, SIGINT);
  sigaddset(&d.signals_, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &d.signals_, nullptr);  // every thread inherits this; main sigwaits
  signal(SIGPIPE, SIG_IGN);

  d.args_.assign(argv + 1, argv + argc);
  bool check_only = false;
  std::erase_if(d.args_, [&](const std::string& a) {
    if (a != "--check-config") return false;
    check_only = true;
    return true;
  });
  bool help = false;
  auto parsed = ParseDaemonArgs(d.args_, &help);
  if (help) {
    std::fputs(DaemonUsage().c_str(), stdout);
    return 0;
  }
  if (!parsed.ok()) {
    std::fprintf(stderr, "sparsekvd: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  d.config_ = *parsed;
  auto backing = ParseBackingSpec(d.config_.backing);
  if (!backing.ok()) {
    std::fprintf(stderr, "sparsekvd: pool.backing: %s\n", std::string(backing.status().message()).c_str());
    return 2;
  }
  d.backing_ = *backing;
  DaemonConfig& config = d.config_;
  if (config.runtime_dir.empty()) config.runtime_dir = DefaultRuntimeDir();
  if (config.unix_socket.empty()) config.unix_socket = absl::StrCat(config.runtime_dir, "/control.sock");
  if (check_only) {
    std::fputs(DescribeConfig(config).c_str(), stdout);
    return 0;
  }
  SetLogLevel(config.log_level);
  SKV_LOG_INFO(kDaemonLog, "sparsekvd %s starting (pid %d)%s", kVersion, getpid(),
               config.config_file.empty() ? "" : absl::StrCat(", config ", config.config_file));
  if (auto s = MakeDirs(config.runtime_dir); !s.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "%s", s.message());
    return 1;
  }
  for (int (Daemon::*step)() : {&Daemon::StartPool, &Daemon::StartRegionTable, &Daemon::StartNetworkPaths,
                                &Daemon::StartArenaPaths, &Daemon::Restore, &Daemon::JoinCluster,
                                &Daemon::StartControlPlane}) {
    if (int code = (d.*step)(); code != 0) return code;
  }
  d.RegisterInCluster();
  if (int code = d.StartMetrics(); code != 0) {
    d.server_->Shutdown();
    return code;
  }
  SKV_LOG_INFO("leases", "lease %d ms; eviction policy %s; limits: %d regions, %d layers, %d-byte entries, %d tokens",
               config.lease_ms, config.eviction_policy, config.limits.max_regions, config.limits.max_layers,
               config.limits.max_entry_bytes, config.limits.max_capacity_tokens);
  d.StartReaper();
  if (int code = d.WriteReady(); code != 0) {
    d.StopReaper();
    d.server_->Shutdown();
    return code;
  }
  d.Serve();
  d.Shutdown();
  return 0;
}

// The reaper expires leases and TTLs, and feeds systemd's watchdog: a daemon whose region table
// is wedged (the reaper cannot take its lock) stops feeding it and gets restarted.
void Daemon::StartReaper() {
  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  if (watchdog) SKV_LOG_INFO(kDaemonLog, "systemd watchdog every %.1f s", watchdog_usec / 1e6);
  reaper_ = std::thread([this, watchdog, watchdog_usec] {
    std::unique_lock lock(reaper_mu_);
    auto period = std::chrono::milliseconds(config_.reap_interval_ms);
    if (watchdog) period = std::min<std::chrono::milliseconds>(period, std::chrono::milliseconds(watchdog_usec / 4000));
    while (!reaper_cv_.wait_for(lock, period, [&] { return stopping_; })) {
      lock.unlock();
      table_->Reap(std::chrono::steady_clock::now());
      if (watchdog) Notify("WATCHDOG=1");
      lock.lock();
    }
  });
}

void Daemon::StopReaper() {
  {
    std::lock_guard lock(reaper_mu_);
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  reaper_.join();
}

int Daemon::WriteReady() {
  if (!config_.ready_file.empty()) {
    if (auto s = WriteReadyFile(config_.ready_file, tcp_port_, config_.unix_socket, shm_ ? shm_->socket_path() : "",
                                metrics_http_ ? metrics_http_->port() : 0, gather_ ? gather_->port() : 0);
        !s.ok()) {
      SKV_LOG_ERROR(kDaemonLog, "%s", s.message());
      return 1;
    }
  }
  SKV_LOG_INFO(kDaemonLog, "ready");
  ready_status_ = absl::StrFormat("serving a %s %s pool on %s", FormatBytes(pool_->size_bytes()), pool_->Describe(),
                                  config_.listen.empty() ? unix_target_ : config_.listen);
  Notify(absl::StrCat("READY=1\nSTATUS=", ready_status_));
  return 0;
}

void Daemon::Serve() {
  while (true) {
    sigwait(&signals_, &stop_signal_);
    if (stop_signal_ == SIGHUP) {
      Notify("RELOADING=1\nSTATUS=reloading config");
      Reload(args_, table_.get(), service_.get());
      Notify(absl::StrCat("READY=1\nSTATUS=", ready_status_));
      continue;
    }
    break;
  }
}

void Daemon::Shutdown() {
  SKV_LOG_INFO(kDaemonLog, "%s: shutting down", stop_signal_ == SIGTERM ? "SIGTERM" : "SIGINT");
  Notify("STOPPING=1\nSTATUS=shutting down");
  metrics_http_.reset();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server_->Wait();
  if (cluster_ != nullptr) {
    table_->SetObserver(nullptr);
    cluster_.reset();  // leaves the cluster: its record goes at once
  }
  StopReaper();
  gather_.reset();
  fabric_.reset();
  verbs_.reset();
  shm_.reset();
  if (!unix_target_.empty()) unlink(config_.unix_socket.c_str());
  if (!config_.ready_file.empty()) unlink(config_.ready_file.c_str());
  auto stats = table_->Stats();
  SKV_LOG_INFO(kDaemonLog, "stopped cleanly: %d regions, %s used of %s, %d evictions", stats.regions(),
               FormatBytes(stats.used_bytes()), FormatBytes(stats.pool_bytes()), stats.evictions());
}

}  // namespace sparsekv
