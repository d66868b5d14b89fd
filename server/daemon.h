// sparsekvd's process: start-up in named steps, serving until a signal, and shutdown.
//
// Start-up is all or nothing: every step either leaves its part running or logs one clear line
// and makes the daemon exit non-zero (2 for a bad configuration, 1 for anything else). The steps,
// in order: the pool (and the descriptor socket that hands it to same-host clients), the region
// table with its tenants and arenas' sizes, the network data paths (tcp-gather, fabric, verbs),
// each tenant arena's own data paths, restore from the journal, the cluster membership, the
// control plane, cluster registration, metrics, the reaper (which also feeds systemd's watchdog),
// the ready file. SIGHUP reloads (reload.cc); SIGTERM/SIGINT shut down in reverse order.
#ifndef SPARSEKV_SERVER_DAEMON_H_
#define SPARSEKV_SERVER_DAEMON_H_

#include <signal.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/config.h"
#include "server/auth.h"
#include "server/cluster_member.h"
#include "server/control_service.h"
#include "server/journal.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/pool.h"
#include "server/region_table.h"
#include "server/transports/fabric_server.h"
#include "server/transports/shm_server.h"
#include "server/transports/tcp_gather_server.h"
#include "server/transports/verbs_server.h"
#include "server/write_gate.h"

namespace sparsekv {

inline constexpr char kDaemonLog[] = "sparsekvd";

// Tells systemd (when run as a Type=notify service) what the daemon is doing. A no-op otherwise.
void Notify(const std::string& state);
void NotifyStatus(const std::string& status);

// SIGHUP: re-reads the config (same command line, so flags still override the file) and applies
// what may change at run time; everything else is reported as needing a restart (reload.cc).
void Reload(const std::vector<std::string>& args, RegionTable* table, ControlService* service);

class Daemon {
 public:
  // The whole process: parses the command line, starts, serves, shuts down; the exit code.
  static int Main(int argc, char** argv);

 private:
  // Each step returns 0 when its part runs, else the exit code (its error already logged).
  int StartPool();            // daemon_pool.cc
  int StartRegionTable();     // daemon_data_paths.cc: table, write gate, tenants, arena sizes
  int StartNetworkPaths();    // daemon_data_paths.cc: tcp-gather, fabric, verbs
  int StartArenaPaths();      // daemon_data_paths.cc: each tenant arena's shm socket and keys
  int Restore();              // daemon_restore.cc
  int JoinCluster();          // daemon_control.cc
  int StartControlPlane();    // daemon_control.cc
  void RegisterInCluster();   // daemon_control.cc
  int StartMetrics();         // daemon_control.cc
  void StartReaper();
  void StopReaper();
  int WriteReady();
  void Serve();
  void Shutdown();

  sigset_t signals_{};
  std::vector<std::string> args_;
  DaemonConfig config_;
  PoolBackingSpec backing_;

  std::unique_ptr<Pool> pool_;
  std::unique_ptr<ShmServer> shm_;
  std::unique_ptr<RegionTable> table_;
  std::unique_ptr<WriteGate> write_gate_;
  Metrics metrics_;
  std::shared_ptr<const TenantDirectory> tenants_;
  int64_t shared_bytes_ = 0;  // the pool below the tenant arenas
  std::unique_ptr<ControlService> service_;

  v1::TransportDescriptor network_;
  std::vector<std::string> data_paths_;
  std::string data_host_;
  std::unique_ptr<TcpGatherServer> gather_;
  std::unique_ptr<FabricServer> fabric_;
  std::unique_ptr<VerbsServer> verbs_;
  std::vector<std::unique_ptr<ShmServer>> arena_shm_;

  std::unique_ptr<RegionJournal> journal_;
  std::unique_ptr<ClusterMember> cluster_;
  std::unique_ptr<grpc::Server> server_;
  int tcp_port_ = 0;
  std::string unix_target_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;

  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool stopping_ = false;
  std::thread reaper_;
  std::string ready_status_;
  int stop_signal_ = 0;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_DAEMON_H_
