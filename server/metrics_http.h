// MetricsHttpServer serves the Prometheus text exposition at GET /metrics (libmicrohttpd, one
// internal thread). Anything else is 404. It renders on demand; nothing is cached.
#ifndef SPARSEKV_SERVER_METRICS_HTTP_H_
#define SPARSEKV_SERVER_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct MHD_Daemon;

namespace sparsekv {

class MetricsHttpServer {
 public:
  // `listen` is "HOST:PORT" (port 0 picks one). `render` produces the exposition text.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen,
                                                                 std::function<std::string()> render);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
  std::function<std::string()> render_;

  friend struct MetricsHttpHandler;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_METRICS_HTTP_H_
