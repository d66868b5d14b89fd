#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "common/ipv4_listen.h"

namespace sparsekv {

struct MetricsHttpHandler {
  static MHD_Result Handle(void* cls, MHD_Connection* connection, const char* url, const char* method,
                           const char*, const char*, size_t*, void**) {
    auto* server = static_cast<MetricsHttpServer*>(cls);
    const bool ok = std::strcmp(method, "GET") == 0 && std::strcmp(url, "/metrics") == 0;
    std::string body = ok ? server->render_() : "not found: try GET /metrics\n";
    MHD_Response* response =
        MHD_create_response_from_buffer(body.size(), body.data(), MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(response, "Content-Type",
                            ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
    MHD_Result result = MHD_queue_response(connection, ok ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, response);
    MHD_destroy_response(response);
    return result;
  }
};

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::function<std::string()> render) {
  auto parsed = ParseIpv4Listen(listen, "metrics.listen", "127.0.0.1:9370");
  if (!parsed.ok()) return parsed.status();
  sockaddr_in addr = *parsed;
  const int port = ntohs(addr.sin_port);
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->render_ = std::move(render);
  server->daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, nullptr, nullptr,
                                     &MetricsHttpHandler::Handle, server.get(), MHD_OPTION_SOCK_ADDR, &addr,
                                     MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
  if (server->daemon_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot serve metrics on %s (address in use, or not an address of this host)", listen));
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : port;
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

}  // namespace sparsekv
