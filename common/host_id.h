// LocalHostId names this host for "can a client map the daemon's pool" checks: /etc/machine-id,
// else the kernel's boot id, else the host name.
#ifndef SPARSEKV_COMMON_HOST_ID_H_
#define SPARSEKV_COMMON_HOST_ID_H_

#include <string>

namespace sparsekv {
std::string LocalHostId();
}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_HOST_ID_H_
