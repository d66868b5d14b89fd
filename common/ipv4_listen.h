// ParseIpv4Listen reads a listen address of the form "IPV4:PORT" (port 0: any free port) for
// the daemon's plain-socket listeners (metrics, tcp-gather). Errors name the config key.
#ifndef SPARSEKV_COMMON_IPV4_LISTEN_H_
#define SPARSEKV_COMMON_IPV4_LISTEN_H_

#include <netinet/in.h>

#include <string>

#include "absl/status/statusor.h"

namespace sparsekv {

absl::StatusOr<sockaddr_in> ParseIpv4Listen(const std::string& text, const std::string& key,
                                            const std::string& example);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_IPV4_LISTEN_H_
