#include "common/config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <map>

#include <toml++/toml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/size_parse.h"

namespace sparsekv {
namespace {

// One option, reachable as a config key ("pool.size") and a flag ("--pool-size").
struct Option {
  const char* key;
  const char* flag;
  const char* help;
  // Applies a textual value (from a flag or a stringified TOML value).
  std::function<absl::Status(DaemonConfig*, const std::string&)> set;
  bool is_bool = false;
};

absl::Status SetInt(const std::string& name, const std::string& v, int64_t lo, int64_t hi,
                    int64_t* out) {
  int64_t x;
  if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: '%s' is not a whole number in [%d, %d]", name, v, lo, hi));
  }
  *out = x;
  return absl::OkStatus();
}

absl::Status SetSize(const std::string& name, const std::string& v, int64_t* out) {
  auto size = ParseSize(v);
  if (!size.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", size.status().message()));
  *out = *size;
  return absl::OkStatus();
}

absl::Status SetBool(const std::string& name, const std::string& v, bool* out) {
  if (v == "true" || v == "1" || v == "yes") *out = true;
  else if (v == "false" || v == "0" || v == "no") *out = false;
  else return absl::InvalidArgumentError(absl::StrFormat("%s: '%s' is not true or false", name, v));
  return absl::OkStatus();
}

const std::vector<Option>& Options() {
  static const auto* options = new std::vector<Option>{
      {"pool.size", "--pool-size", "pool size, like 512MiB or 4GiB (default: 1/4 of available memory, at most 4GiB)",
       [](DaemonConfig* c, const std::string& v) { return SetSize("pool.size", v, &c->pool_bytes); }},
      {"pool.backing", "--backing", "memfd | memfd-hugetlb | file:PATH | hugetlbfs:PATH | devdax:/dev/daxX.Y | numa:N (default memfd)",
       [](DaemonConfig* c, const std::string& v) { c->backing = v; return absl::OkStatus(); }},
      {"pool.page_size", "--page-size", "pool page size, a multiple of 64 bytes (default 256KiB)",
       [](DaemonConfig* c, const std::string& v) { return SetSize("pool.page_size", v, &c->page_bytes); }},
      {"pool.prefault", "--prefault", "reserve and touch the whole pool at start-up (default true)",
       [](DaemonConfig* c, const std::string& v) { return SetBool("pool.prefault", v, &c->prefault); }, true},
      {"listen.tcp", "--listen", "HOST:PORT of the gRPC control plane; port 0 picks one; \"\" disables (default 127.0.0.1:7370)",
       [](DaemonConfig* c, const std::string& v) { c->listen = v; return absl::OkStatus(); }},
      {"listen.unix", "--unix-socket", "path of the gRPC Unix socket; \"none\" disables (default RUNTIME_DIR/control.sock)",
       [](DaemonConfig* c, const std::string& v) { c->unix_socket = v; return absl::OkStatus(); }},
      {"listen.data", "--data-listen", "IPV4:PORT of the tcp-gather data path for clients that cannot map the pool; port 0 picks one; \"\" disables (default 127.0.0.1:0)",
       [](DaemonConfig* c, const std::string& v) { c->data_listen = v; return absl::OkStatus(); }},
      {"listen.allow_plaintext_remote", "--allow-plaintext-remote", "allow a plaintext (non-TLS) control plane on a non-loopback address (default false)",
       [](DaemonConfig* c, const std::string& v) { return SetBool("listen.allow_plaintext_remote", v, &c->allow_plaintext_remote); }, true},
      {"tls.cert_file", "--tls-cert", "PEM certificate chain of the TCP control plane; with tls.key_file the listener speaks TLS only",
       [](DaemonConfig* c, const std::string& v) { c->tls_cert_file = v; return absl::OkStatus(); }},
      {"tls.key_file", "--tls-key", "PEM private key for tls.cert_file",
       [](DaemonConfig* c, const std::string& v) { c->tls_key_file = v; return absl::OkStatus(); }},
      {"tls.client_ca_file", "--tls-client-ca", "PEM CA bundle: require and verify client certificates (mutual TLS)",
       [](DaemonConfig* c, const std::string& v) { c->tls_client_ca_file = v; return absl::OkStatus(); }},
      {"auth.tenants_file", "--tenants-file", "TOML file of tenants, their bearer tokens, quotas and guarantees, and the admin tokens; set: every call needs a token (default: no authentication, one tenant)",
       [](DaemonConfig* c, const std::string& v) { c->tenants_file = v; return absl::OkStatus(); }},
      {"transports.fabric_provider", "--fabric-provider", "libfabric provider for one-sided RMA: auto (hardware first, then tcp) | tcp | verbs | efa | cxi | any provider name | off (default auto); binds the host of listen.data",
       [](DaemonConfig* c, const std::string& v) { c->fabric_provider = v; return absl::OkStatus(); }},
      {"transports.verbs", "--verbs", "native ibverbs transport (rdmacm listener on the host of listen.data, port chosen by the kernel): auto (when an RDMA device exists) | on (fail without one) | off (default auto)",
       [](DaemonConfig* c, const std::string& v) {
         if (v != "auto" && v != "on" && v != "off") return absl::InvalidArgumentError(absl::StrCat("transports.verbs: '", v, "' is not auto, on or off"));
         c->verbs = v;
         return absl::OkStatus();
       }},
      {"metrics.listen", "--metrics-listen", "IPV4:PORT of the Prometheus /metrics endpoint; port 0 picks one; \"\" disables (default 127.0.0.1:9370)",
       [](DaemonConfig* c, const std::string& v) { c->metrics_listen = v; return absl::OkStatus(); }},
      {"runtime.dir", "--runtime-dir", "directory for sockets (default /run/sparsekvd as root, else per user)",
       [](DaemonConfig* c, const std::string& v) { c->runtime_dir = v; return absl::OkStatus(); }},
      {"runtime.state_dir", "--state-dir", "directory for the region journal that lets a restart keep sealed regions; \"\" keeps none (default)",
       [](DaemonConfig* c, const std::string& v) { c->state_dir = v; return absl::OkStatus(); }},
      {"runtime.ready_file", "--ready-file", "file written with the bound port once every listener is up",
       [](DaemonConfig* c, const std::string& v) { c->ready_file = v; return absl::OkStatus(); }},
      {"leases.lease_ms", "--lease-ms", "lease length in milliseconds (default 10000)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("leases.lease_ms", v, 100, 3600000, &c->lease_ms); }},
      {"leases.reap_interval_ms", "--reap-interval-ms", "how often expired leases, TTLs and quarantined pages are processed (default 200)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("leases.reap_interval_ms", v, 10, 60000, &c->reap_interval_ms); }},
      {"leases.abandon_ms", "--abandon-ms", "delete an unsealed region nobody has held a lease on for this long (a crashed writer's); 0 never (default 60000)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("leases.abandon_ms", v, 0, int64_t{30} * 24 * 3600 * 1000, &c->abandon_ms); }},
      {"cluster.url", "--cluster", "join a cluster: etcd://HOST:PORT[,HOST:PORT...]/NAME (default: none, a single node)",
       [](DaemonConfig* c, const std::string& v) { c->cluster_url = v; return absl::OkStatus(); }},
      {"cluster.node_id", "--cluster-node-id", "this node's id (default: kept in <state_dir>/node_id, else random per run)",
       [](DaemonConfig* c, const std::string& v) { c->cluster_node_id = v; return absl::OkStatus(); }},
      {"cluster.advertise", "--cluster-advertise", "control-plane HOST:PORT peers and clients dial (default: from listen.tcp)",
       [](DaemonConfig* c, const std::string& v) { c->cluster_advertise = v; return absl::OkStatus(); }},
      {"cluster.zone", "--cluster-zone", "optional zone label of this node",
       [](DaemonConfig* c, const std::string& v) { c->cluster_zone = v; return absl::OkStatus(); }},
      {"cluster.lease_ttl_s", "--cluster-ttl-s", "etcd lease TTL of this node's record, seconds (default 10)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("cluster.lease_ttl_s", v, 2, 3600, &c->cluster_ttl_s); }},
      {"cluster.refresh_ms", "--cluster-refresh-ms", "keep-alive and free-bytes refresh period (default 2000)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("cluster.refresh_ms", v, 100, 600000, &c->cluster_refresh_ms); }},
      {"cluster.token_file", "--cluster-token-file", "bearer token (admin) presented to peers when copying replicas",
       [](DaemonConfig* c, const std::string& v) { c->cluster_token_file = v; return absl::OkStatus(); }},
      {"eviction.policy", "--eviction-policy", "lru (default)",
       [](DaemonConfig* c, const std::string& v) {
         if (v != "lru") return absl::InvalidArgumentError(absl::StrFormat("eviction.policy: unknown policy '%s' (known: lru)", v));
         c->eviction_policy = v;
         return absl::OkStatus();
       }},
      {"limits.max_regions", "--max-regions", "regions the daemon holds at most (default 65536)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("limits.max_regions", v, 1, int64_t{1} << 30, &c->limits.max_regions); }},
      {"limits.max_layers", "--max-layers", "layers of one region at most (default 512)",
       [](DaemonConfig* c, const std::string& v) {
         int64_t x; auto s = SetInt("limits.max_layers", v, 1, 1 << 16, &x); c->limits.max_layers = static_cast<int32_t>(x); return s; }},
      {"limits.max_entry_bytes", "--max-entry-bytes", "entry size at most (default 65536)",
       [](DaemonConfig* c, const std::string& v) {
         int64_t x; auto s = SetInt("limits.max_entry_bytes", v, 1, 1 << 24, &x); c->limits.max_entry_bytes = static_cast<int32_t>(x); return s; }},
      {"limits.max_capacity_tokens", "--max-capacity-tokens", "tokens of one region's layer at most (default 4194304)",
       [](DaemonConfig* c, const std::string& v) { return SetInt("limits.max_capacity_tokens", v, 1, int64_t{1} << 32, &c->limits.max_capacity_tokens); }},
      {"limits.max_key_bytes", "--max-key-bytes", "region key length at most (default 256)",
       [](DaemonConfig* c, const std::string& v) {
         int64_t x; auto s = SetInt("limits.max_key_bytes", v, 1, 4096, &x); c->limits.max_key_bytes = static_cast<int32_t>(x); return s; }},
      {"log.level", "--log-level", "debug | info | warning | error (default info)",
       [](DaemonConfig* c, const std::string& v) {
         if (!ParseLogLevel(v, &c->log_level)) return absl::InvalidArgumentError(absl::StrFormat("log.level: unknown level '%s'", v));
         return absl::OkStatus();
       }},
  };
  return *options;
}

const Option* FindByKey(std::string_view key) {
  for (const auto& o : Options()) if (key == o.key) return &o;
  return nullptr;
}
const Option* FindByFlag(std::string_view flag) {
  for (const auto& o : Options()) if (flag == o.flag) return &o;
  return nullptr;
}

// TOML scalars as the text a flag would carry.
absl::StatusOr<std::string> ScalarText(const std::string& key, const toml::node& node) {
  if (auto s = node.value<std::string>(); s && node.is_string()) return *s;
  if (node.is_integer()) return absl::StrCat(*node.value<int64_t>());
  if (node.is_boolean()) return std::string(*node.value<bool>() ? "true" : "false");
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: expected a string, integer or boolean, got a %s", key,
      node.is_table() ? "table" : node.is_array() ? "array" : "floating-point or date value"));
}

}  // namespace

absl::Status LoadConfigFile(const std::string& path, DaemonConfig* config) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrFormat("config %s: cannot be read: %s", path, std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (auto s = LoadConfigText(text.str(), path, config); !s.ok()) return s;
  config->config_file = path;
  return absl::OkStatus();
}

absl::Status LoadConfigText(std::string_view text, const std::string& path, DaemonConfig* config) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return absl::InvalidArgumentError(absl::StrFormat("config %s:%d:%d: %s", path, where.line,
                                                      where.column, e.description()));
  }
  for (const auto& [section, node] : root) {
    const toml::table* table = node.as_table();
    if (table == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "config %s: top-level key '%s' must be a section like [pool]", path, std::string(section.str())));
    }
    for (const auto& [name, value] : *table) {
      std::string key = std::string(section.str()) + "." + std::string(name.str());
      const Option* option = FindByKey(key);
      if (option == nullptr) {
        return absl::InvalidArgumentError(absl::StrFormat("config %s: unknown key '%s'", path, key));
      }
      auto text = ScalarText(key, value);
      if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", text.status().message()));
      if (auto s = option->set(config, *text); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", s.message()));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DaemonConfig> ParseDaemonArgs(const std::vector<std::string>& args, bool* help) {
  DaemonConfig config;
  *help = false;
  // Pass 1: --help and --config.
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      *help = true;
      return config;
    }
    std::string value;
    if (args[i] == "--config") {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError("--config needs a FILE");
      value = args[++i];
    } else if (args[i].rfind("--config=", 0) == 0) {
      value = args[i].substr(9);
    } else {
      continue;
    }
    if (auto s = LoadConfigFile(value, &config); !s.ok()) return s;
  }
  // Pass 2: every other flag, in order.
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    bool has_value = false;
    if (auto eq = flag.find('='); eq != std::string::npos && flag.rfind("--", 0) == 0) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    if (flag == "--config") {
      if (!has_value) ++i;
      continue;
    }
    const Option* option = FindByFlag(flag);
    if (option == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("unknown option '%s' (see sparsekvd --help)", args[i]));
    }
    if (!has_value) {
      if (option->is_bool && (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)) {
        value = "true";
      } else if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrFormat("option %s needs a value", flag));
      } else {
        value = args[++i];
      }
    }
    if (auto s = option->set(&config, value); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " (", s.message(), ")"));
    }
  }
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  return config;
}

std::string DaemonUsage() {
  std::string out =
      "usage: sparsekvd [--config FILE] [options]\n"
      "\n"
      "sparsekvd serves latent-cache regions from a memory pool (memfd, file, hugetlbfs,\n"
      "device-dax CXL memory or a CXL NUMA node) to sparsekv clients, with a gRPC control plane.\n"
      "Flags override the config file; each flag's config key is shown in brackets.\n\n"
      "options:\n"
      "  --config FILE            TOML config file (see deploy/sparsekvd.toml)\n";
  for (const auto& o : Options()) {
    absl::StrAppendFormat(&out, "  %-24s %s [%s]\n", absl::StrCat(o.flag, o.is_bool ? "" : " V"),
                          o.help, o.key);
  }
  out += "  --check-config           validate the config, print the effective config, exit\n";
  out += "  --help                   this text\n";
  return out;
}

absl::Status ValidateConfig(const DaemonConfig& c) {
  if (c.page_bytes < 4096 || c.page_bytes % 4096 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pool.page_size: %d is not a positive multiple of 4096 bytes", c.page_bytes));
  }
  if (c.pool_bytes != 0 && c.pool_bytes < c.page_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pool.size: %d bytes is smaller than one page (%d bytes)", c.pool_bytes, c.page_bytes));
  }
  if (c.limits.max_entry_bytes > c.page_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "limits.max_entry_bytes: %d does not fit in one pool page of %d bytes",
        c.limits.max_entry_bytes, c.page_bytes));
  }
  if (c.listen.empty() && c.unix_socket == "none") {
    return absl::InvalidArgumentError("listen.tcp and listen.unix are both disabled: no control plane");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls.cert_file and tls.key_file go together: set both or neither");
  }
  if (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("tls.client_ca_file (mutual TLS) needs tls.cert_file and tls.key_file");
  }
  if (!c.cluster_url.empty() && c.cluster_refresh_ms * 2 > c.cluster_ttl_s * 1000) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cluster.refresh_ms: %d must be at most half of cluster.lease_ttl_s (%d s)", c.cluster_refresh_ms, c.cluster_ttl_s));
  }
  if (c.reap_interval_ms * 2 > c.lease_ms) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "leases.reap_interval_ms: %d must be at most half of leases.lease_ms (%d)",
        c.reap_interval_ms, c.lease_ms));
  }
  return absl::OkStatus();
}

std::string DescribeConfig(const DaemonConfig& c) {
  auto q = [](const std::string& s) { return absl::StrCat("\"", s, "\""); };
  static constexpr const char* kLevels[] = {"debug", "info", "warning", "error"};
  return absl::StrCat(
      "[pool]\n", "size = ", q(c.pool_bytes == 0 ? std::string("auto") : absl::StrCat(c.pool_bytes)), "\n",
      "backing = ", q(c.backing), "\n", "page_size = ", q(absl::StrCat(c.page_bytes)), "\n",
      "prefault = ", c.prefault ? "true" : "false", "\n\n",
      "[listen]\n", "tcp = ", q(c.listen), "\n", "unix = ", q(c.unix_socket), "\n", "data = ", q(c.data_listen), "\n",
      "allow_plaintext_remote = ", c.allow_plaintext_remote ? "true" : "false", "\n\n",
      "[tls]\n", "cert_file = ", q(c.tls_cert_file), "\n", "key_file = ", q(c.tls_key_file), "\n", "client_ca_file = ", q(c.tls_client_ca_file), "\n\n",
      "[auth]\n", "tenants_file = ", q(c.tenants_file), "\n\n",
      "[transports]\n", "fabric_provider = ", q(c.fabric_provider), "\n", "verbs = ", q(c.verbs), "\n\n",
      "[metrics]\n", "listen = ", q(c.metrics_listen), "\n\n",
      "[runtime]\n", "dir = ", q(c.runtime_dir), "\n", "ready_file = ", q(c.ready_file), "\n", "state_dir = ", q(c.state_dir), "\n\n",
      "[leases]\n", "lease_ms = ", c.lease_ms, "\n", "reap_interval_ms = ", c.reap_interval_ms, "\n", "abandon_ms = ", c.abandon_ms, "\n\n",
      "[eviction]\n", "policy = ", q(c.eviction_policy), "\n\n",
      "[cluster]\n", "url = ", q(c.cluster_url), "\n", "node_id = ", q(c.cluster_node_id), "\n", "advertise = ",
      q(c.cluster_advertise), "\n", "zone = ", q(c.cluster_zone), "\n", "lease_ttl_s = ", c.cluster_ttl_s, "\n",
      "refresh_ms = ", c.cluster_refresh_ms, "\n", "token_file = ", q(c.cluster_token_file), "\n\n",
      "[limits]\n", "max_regions = ", c.limits.max_regions, "\n", "max_layers = ", c.limits.max_layers,
      "\n", "max_entry_bytes = ", c.limits.max_entry_bytes, "\n", "max_capacity_tokens = ",
      c.limits.max_capacity_tokens, "\n", "max_key_bytes = ", c.limits.max_key_bytes, "\n\n",
      "[log]\n", "level = ", q(kLevels[static_cast<int>(c.log_level)]), "\n");
}

}  // namespace sparsekv
