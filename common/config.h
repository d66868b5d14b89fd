// DaemonConfig is everything sparsekvd is told at start-up: from built-in defaults, then the
// TOML config file (--config FILE), then command-line flags, each overriding the one before.
//
// Unknown keys, unknown flags and bad values are errors that name the key or flag and the value;
// the daemon never starts on a config it only half understood. See deploy/sparsekvd.toml for
// the documented file.
#ifndef SPARSEKV_COMMON_CONFIG_H_
#define SPARSEKV_COMMON_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/log.h"

namespace sparsekv {

struct Limits {
  int64_t max_regions = 65536;
  int32_t max_layers = 512;
  int32_t max_entry_bytes = 65536;
  int64_t max_capacity_tokens = int64_t{4} << 20;  // 4M tokens per layer
  int32_t max_key_bytes = 256;
  int32_t max_list = 10000;      // regions in one ListRegions reply
  int32_t max_lease_ids = 4096;  // leases in one Renew/Release request
};

struct DaemonConfig {
  // [pool]
  int64_t pool_bytes = 0;             // 0: sized to fit the machine at start-up
  std::string backing = "memfd";      // memfd | file:PATH | hugetlbfs:PATH | devdax:/dev/daxX.Y | numa:N
  int64_t page_bytes = 256 * 1024;
  bool prefault = true;               // reserve and touch the whole pool at start-up
  // [listen]
  std::string listen = "127.0.0.1:7370";  // TCP control plane; "" disables
  std::string unix_socket;                // "" : <runtime_dir>/control.sock; "none" disables
  std::string data_listen = "127.0.0.1:0";  // tcp-gather data path (IPV4:PORT); "" disables
  bool allow_plaintext_remote = false;    // plaintext gRPC on a non-loopback address needs this opt-in
  // [tls] (the TCP control-plane listener; the Unix socket is protected by its mode)
  std::string tls_cert_file;              // PEM server certificate chain; set with key: TLS only
  std::string tls_key_file;
  std::string tls_client_ca_file;         // set: mutual TLS, client certificates must chain to it
  // [auth]
  std::string tenants_file;               // tenants, their bearer tokens and quotas; "" : no auth
  // [transports]
  std::string fabric_provider = "auto";  // libfabric RMA: auto | tcp | verbs | efa | cxi | PROVIDER | off
  std::string verbs = "auto";            // native ibverbs: auto (when a device exists) | on | off
  // [metrics]
  std::string metrics_listen = "127.0.0.1:9370";  // Prometheus text at http://HOST:PORT/metrics; "" disables
  // [runtime]
  std::string runtime_dir;            // "" : /run/sparsekvd as root, else $XDG_RUNTIME_DIR/sparsekvd or /tmp/sparsekvd-UID
  std::string ready_file;             // written with {"port":N,...} once every listener is up
  std::string state_dir;              // region journal for restarts; "" keeps no state
  // [leases]
  int64_t lease_ms = 10000;
  int64_t reap_interval_ms = 200;     // TTL expiry, lease expiry and quarantine reclaim
  int64_t abandon_ms = 60000;         // an unsealed region with no lease for this long is deleted; 0: never
  // [eviction]
  std::string eviction_policy = "lru";
  // [cluster] (see common/cluster.h); url "" : a single node, no etcd
  std::string cluster_url;            // etcd://HOST:PORT[,HOST:PORT...]/NAME
  std::string cluster_node_id;        // "" : kept in <state_dir>/node_id (random once), else random per run
  std::string cluster_advertise;      // control-plane HOST:PORT other nodes and clients dial; "" : from listen.tcp
  std::string cluster_zone;           // optional label, shown in `sparsekvctl --cluster URL nodes`
  int64_t cluster_ttl_s = 10;         // etcd lease of the node's record: a dead node is noticed within this
  int64_t cluster_refresh_ms = 2000;  // keep-alive and free-bytes refresh period
  std::string cluster_token_file;     // bearer token this node presents to peers when copying replicas
  // [limits]
  Limits limits;
  // [log]
  LogLevel log_level = LogLevel::kInfo;

  std::string config_file;            // where the file values came from, if anywhere
};

// Reads a TOML config file over `config`. Errors name the file, the key and the value.
absl::Status LoadConfigFile(const std::string& path, DaemonConfig* config);
// The same for TOML text; `origin` names it in errors.
absl::Status LoadConfigText(std::string_view text, const std::string& origin, DaemonConfig* config);

// Parses argv: --config FILE is read first wherever it stands, then every other flag overrides it.
// Sets *help when --help was given (and returns OK without validating further).
absl::StatusOr<DaemonConfig> ParseDaemonArgs(const std::vector<std::string>& args, bool* help);

// The --help text: every option, its config key and default.
std::string DaemonUsage();

// Checks cross-field constraints (page size vs. cache lines, lease bounds, ...).
absl::Status ValidateConfig(const DaemonConfig& config);

// The effective config as TOML, for logs and `--check-config`.
std::string DescribeConfig(const DaemonConfig& config);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_CONFIG_H_
