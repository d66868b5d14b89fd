// Uses the public API only. Connecting to a port nobody listens on must fail cleanly.
#include <cstdio>

#include "sparsekv/client.h"

int main() {
  sparsekv::ClientOptions options;
  options.server = "127.0.0.1:1";
  options.rpc_timeout_ms = 200;
  auto client = sparsekv::Client::Connect(options);
  if (client.ok() || client.status().code() != absl::StatusCode::kUnavailable) {
    std::printf("unexpected: %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::printf("consumer OK: %s\n", client.status().ToString().c_str());
  return 0;
}
