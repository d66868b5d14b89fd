// Start-up steps: the cluster membership, the control plane (gRPC over TCP with TLS or on a Unix
// socket), registration in the cluster once the port is bound, and the metrics endpoint.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/grpc_tls.h"
#include "common/log.h"
#include "server/daemon.h"

namespace sparsekv {
namespace {

// Joins the cluster named in [cluster]: the node id, the advertised addresses, the token for peers.
absl::StatusOr<std::unique_ptr<ClusterMember>> MakeCluster(const DaemonConfig& config, const TcpGatherServer* gather,
                                                           bool fabric, bool verbs, RegionTable* table) {
  auto url = ParseClusterUrl(config.cluster_url);
  if (!url.ok()) return absl::InvalidArgumentError(absl::StrCat("cluster.url: ", url.status().message()));
  ClusterMember::Options options;
  options.url = *url;
  auto id = ClusterMember::ResolveNodeId(config.cluster_node_id, config.state_dir);
  if (!id.ok()) return id.status();
  options.node_id = *id;
  if (config.cluster_advertise.empty()) {
    if (config.listen.empty()) {
      return absl::InvalidArgumentError("cluster.url needs a TCP control plane (listen.tcp) that peers can dial");
    }
    const std::string host = config.listen.substr(0, config.listen.rfind(':'));
    if (host == "0.0.0.0" || host == "[::]" || host.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "listen.tcp %s is a wildcard: set cluster.advertise to the HOST:PORT other nodes dial", config.listen));
    }
  }
  if (gather != nullptr) options.data = absl::StrCat(gather->host(), ":", gather->port());
  options.transports.push_back("shm");
  if (gather != nullptr) options.transports.push_back("tcp-gather");
  if (fabric) options.transports.push_back("fabric");
  if (verbs) options.transports.push_back("verbs");
  options.zone = config.cluster_zone;
  options.ttl_s = config.cluster_ttl_s;
  options.refresh_ms = config.cluster_refresh_ms;
  if (!config.cluster_token_file.empty()) {
    std::ifstream in(config.cluster_token_file);
    if (!in || !std::getline(in, options.token)) {
      return absl::InvalidArgumentError(absl::StrFormat("cluster.token_file %s cannot be read", config.cluster_token_file));
    }
  }
  SKV_LOG_INFO("cluster", "node %s joins %s (lease %d s, refresh %d ms)", options.node_id, url->ToString(),
               options.ttl_s, options.refresh_ms);
  return ClusterMember::Create(std::move(options), table);
}

// TLS (optionally mutual) from [tls], else plaintext, which a non-loopback address must opt into.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ControlPlaneCredentials(const DaemonConfig& config) {
  if (config.tls_cert_file.empty()) {
    const std::string host = config.listen.substr(0, config.listen.rfind(':'));
    const bool loopback = host == "localhost" || host.rfind("127.", 0) == 0 || host == "[::1]";
    if (!loopback && !config.allow_plaintext_remote) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "listen.tcp = %s is not loopback and no TLS is configured: set tls.cert_file and tls.key_file, or "
          "listen.allow_plaintext_remote = true (--allow-plaintext-remote) on a network you trust", config.listen));
    }
    if (!loopback) {
      SKV_LOG_WARN(kDaemonLog, "PLAINTEXT control plane on %s (listen.allow_plaintext_remote): tokens and region keys "
                   "cross the network unencrypted", config.listen);
    }
    return grpc::InsecureServerCredentials();
  }
  auto cert = ReadPem(config.tls_cert_file, "tls.cert_file");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(config.tls_key_file, "tls.key_file");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!config.tls_client_ca_file.empty()) {
    auto ca = ReadPem(config.tls_client_ca_file, "tls.client_ca_file");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  SKV_LOG_INFO(kDaemonLog, "control plane over TLS%s on %s",
               config.tls_client_ca_file.empty() ? "" : " with client certificates (mutual TLS)", config.listen);
  return grpc::SslServerCredentials(options);
}

}  // namespace

// Cluster membership, in place before the control plane serves: every create claims its key.
int Daemon::JoinCluster() {
  if (config_.cluster_url.empty()) return 0;
  auto made = MakeCluster(config_, gather_.get(), fabric_ != nullptr, verbs_ != nullptr, table_.get());
  if (!made.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "%s", made.status().message());
    return 1;
  }
  cluster_ = std::move(*made);
  table_->SetObserver(cluster_.get());
  service_->SetCluster(cluster_.get());
  return 0;
}

int Daemon::StartControlPlane() {
  const DaemonConfig& config = config_;
  grpc::ServerBuilder builder;
  if (!config.listen.empty()) {
    auto credentials = ControlPlaneCredentials(config);
    if (!credentials.ok()) {
      SKV_LOG_ERROR(kDaemonLog, "%s", credentials.status().message());
      return 1;
    }
    builder.AddListeningPort(config.listen, *credentials, &tcp_port_);
  }
  if (config.unix_socket != "none") {
    unlink(config.unix_socket.c_str());
    unix_target_ = absl::StrCat("unix:", config.unix_socket);
    builder.AddListeningPort(unix_target_, grpc::InsecureServerCredentials());
  }
  // Without this gRPC binds with SO_REUSEPORT and a second daemon would silently share the port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || (!config.listen.empty() && tcp_port_ == 0)) {
    SKV_LOG_ERROR(kDaemonLog, "cannot listen on %s%s (address in use, or not an address of this host)",
                  config.listen.empty() ? unix_target_ : config.listen,
                  config.listen.empty() || unix_target_.empty() ? "" : absl::StrCat(" / ", unix_target_));
    return 1;
  }
  if (!config.listen.empty()) {
    SKV_LOG_INFO("control", "gRPC on %s (port %d)", config.listen, tcp_port_);
  }
  if (!unix_target_.empty()) {
    chmod(config.unix_socket.c_str(), 0660);
    SKV_LOG_INFO("control", "gRPC on %s", unix_target_);
  }
  return 0;
}

// Registration: after the listeners, so the advertised port is the bound one.
void Daemon::RegisterInCluster() {
  if (cluster_ == nullptr) return;
  const std::string control = !config_.cluster_advertise.empty()
                                  ? config_.cluster_advertise
                                  : absl::StrCat(config_.listen.substr(0, config_.listen.rfind(':')), ":", tcp_port_);
  SKV_LOG_INFO("cluster", "node %s advertises %s", cluster_->node_id(), control);
  cluster_->Run(control);
}

int Daemon::StartMetrics() {
  if (config_.metrics_listen.empty()) return 0;
  auto started_http = MetricsHttpServer::Start(config_.metrics_listen, [this] {
    std::string text = metrics_.RenderPrometheus(table_->Stats());
    if (cluster_ != nullptr) text += cluster_->Metrics();
    return text;
  });
  if (!started_http.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "%s", started_http.status().message());
    return 1;
  }
  metrics_http_ = std::move(*started_http);
  SKV_LOG_INFO("metrics", "Prometheus text on http://%s:%d/metrics",
               config_.metrics_listen.substr(0, config_.metrics_listen.rfind(':')), metrics_http_->port());
  return 0;
}

}  // namespace sparsekv
