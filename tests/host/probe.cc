// The work a host process does with libsparsekv in the host-process tests: create, write, commit,
// seal, fetch and verify a region over one transport. Compiled into host_probe (linked with
// libsparsekv) and into probe_ext.so (a module that a host dlopens, as Python imports an
// extension).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "sparsekv/client.h"

// 0: every step OK; 2: the transport cannot be used on this host (e.g. no libfabric provider);
// 1: a failure. `message` says what happened.
extern "C" __attribute__((visibility("default"))) int sparsekv_probe(const char* server, const char* transport,
                                                                    char* message, size_t message_bytes) {
  using namespace sparsekv;
  auto say = [&](int code, const std::string& text) {
    std::snprintf(message, message_bytes, "%s", text.c_str());
    return code;
  };
  ClientOptions options;
  options.server = server;
  options.transport = transport;
  auto client = Client::Connect(options);
  if (!client.ok()) return say(1, "connect: " + client.status().ToString());
  const std::string key = std::string("probe-") + transport;
  auto region = (*client)->Create({key, 2, 656, 64, 0});
  if (!region.ok()) {
    const bool unavailable = region.status().code() == absl::StatusCode::kFailedPrecondition &&
                             std::string(region.status().message()).find("no data-plane transport") != std::string::npos;
    return say(unavailable ? 2 : 1, "create: " + region.status().ToString());
  }
  std::vector<std::byte> entries(64 * 656);
  for (size_t i = 0; i < entries.size(); ++i) entries[i] = static_cast<std::byte>(i * 31 + 7);
  for (int32_t layer = 0; layer < 2; ++layer) {
    if (auto st = (*region)->Write(layer, 0, entries); !st.ok()) return say(1, "write: " + st.ToString());
  }
  if (auto st = (*region)->Commit(64); !st.ok()) return say(1, "commit: " + st.ToString());
  if (auto st = (*region)->Seal(); !st.ok()) return say(1, "seal: " + st.ToString());
  std::vector<int32_t> idx = {63, 0, 17, 40};
  std::vector<std::byte> got(idx.size() * 656);
  if (auto st = (*region)->Fetch(1, idx, absl::MakeSpan(got)); !st.ok()) return say(1, "fetch: " + st.ToString());
  for (size_t i = 0; i < idx.size(); ++i) {
    if (std::memcmp(got.data() + i * 656, entries.data() + idx[i] * 656, 656) != 0) return say(1, "fetch: wrong bytes");
  }
  if (auto st = (*region)->Verify(); !st.ok()) return say(1, "verify: " + st.ToString());
  region->reset();
  (void)(*client)->Delete(key);
  return say(0, std::string("ok over ") + transport);
}
