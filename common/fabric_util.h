// Shared libfabric helpers for the daemon's RMA endpoint and the client's fabric transport.
#ifndef SPARSEKV_COMMON_FABRIC_UTIL_H_
#define SPARSEKV_COMMON_FABRIC_UTIL_H_

#include <rdma/fabric.h>

#include <string>

#include "absl/status/status.h"

namespace sparsekv {

inline constexpr uint32_t kFabricApiVersion = FI_VERSION(1, 9);

// Maps a libfabric return code (negative FI_E*) to a status whose code says what a caller can
// do about it: UNAVAILABLE (peer gone, retry after reconnecting), DEADLINE_EXCEEDED,
// PERMISSION_DENIED (key or access rights), INVALID_ARGUMENT, RESOURCE_EXHAUSTED, else INTERNAL.
absl::Status FabricError(int rc, const std::string& what);

// True for providers that move RMA through software on the host CPUs (tcp, sockets, udp, shm
// emulation): for those a server-side gather moves the same bytes with far fewer round trips.
bool IsSoftwareRmaProvider(const std::string& provider);

// Closes a libfabric object if set; null-safe.
inline void CloseFid(fid* f) {
  if (f != nullptr) fi_close(f);
}

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_FABRIC_UTIL_H_
