// Start-up step: the pool (map and reserve it, or take it back from systemd's descriptor store)
// and the descriptor socket that hands it to clients on this host.
#include <chrono>

#include <systemd/sd-daemon.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/size_parse.h"
#include "server/daemon.h"

namespace sparsekv {
namespace {

constexpr char kPoolFdName[] = "sparsekv-pool";

// A pool descriptor systemd kept for us across a restart (FDSTORE), if any; else -1.
int InheritedPoolFd() {
  int inherited_fd = -1;
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    if (std::string(names[i]) == kPoolFdName && inherited_fd < 0) inherited_fd = SD_LISTEN_FDS_START + i;
    free(names[i]);
  }
  free(names);
  return inherited_fd;
}

}  // namespace

int Daemon::StartPool() {
  DaemonConfig& config = config_;
  bool auto_size = config.pool_bytes == 0;
  if (auto_size) config.pool_bytes = DefaultPoolBytes(config.page_bytes);
  config.pool_bytes = config.pool_bytes / config.page_bytes * config.page_bytes;
  auto started = std::chrono::steady_clock::now();
  NotifyStatus(absl::StrFormat("reserving a %s %s pool", FormatBytes(config.pool_bytes), config.backing));
  auto last_report = started;
  auto progress = [&](int64_t done, int64_t total) {
    auto now = std::chrono::steady_clock::now();
    std::string line = absl::StrFormat("reserving pool: %s of %s (%.0f%%)", FormatBytes(done), FormatBytes(total),
                                       100.0 * done / total);
    NotifyStatus(line);
    if (now - last_report >= std::chrono::seconds(2) && done < total) {
      SKV_LOG_INFO("pool", "%s", line);
      last_report = now;
    }
  };
  const int inherited_fd = InheritedPoolFd();
  auto pool = Pool::Create(backing_, config.pool_bytes, config.prefault, progress, inherited_fd);
  if (!pool.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "pool: %s", pool.status().message());
    return 1;
  }
  pool_ = *std::move(pool);
  SKV_LOG_INFO("pool", "backing=%s size=%s%s page=%s pages=%d prefault=%s (%.0f ms)", pool_->Describe(),
               FormatBytes(pool_->size_bytes()), auto_size ? " (auto: 1/4 of available memory, at most 4 GiB)" : "",
               FormatBytes(config.page_bytes), pool_->size_bytes() / config.page_bytes,
               config.prefault ? "yes" : "no",
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());

  if (pool_->memory_backed()) {
    if (inherited_fd >= 0) {
      SKV_LOG_INFO("pool", "took the pool back from systemd's descriptor store");
    } else if (getenv("NOTIFY_SOCKET") != nullptr) {
      int fd = pool_->fd();
      if (sd_pid_notify_with_fds(0, 0, absl::StrCat("FDSTORE=1\nFDNAME=", kPoolFdName).c_str(), &fd, 1) > 0) {
        SKV_LOG_INFO("pool", "pool descriptor kept in systemd's descriptor store: a restart keeps the pool");
      }
    } else if (!config.state_dir.empty()) {
      SKV_LOG_WARN("pool", "not run under systemd: a restart loses this %s pool and every region in it "
                   "(use a file, hugetlbfs or devdax backing, or run under systemd)", pool_->Describe());
    }
  }

  if (pool_->client_path().empty()) {
    auto started_shm = ShmServer::Start(pool_.get(), absl::StrCat(config.runtime_dir, "/pool.sock"));
    if (!started_shm.ok()) {
      SKV_LOG_ERROR(kDaemonLog, "shm transport: %s", started_shm.status().message());
      return 1;
    }
    shm_ = std::move(*started_shm);
    SKV_LOG_INFO("shm", "pool descriptor served on %s", shm_->socket_path());
  } else {
    SKV_LOG_INFO("shm", "clients map the pool at %s", pool_->client_path());
  }
  return 0;
}

}  // namespace sparsekv
