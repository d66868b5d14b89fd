#include "common/ipv4_listen.h"

#include <arpa/inet.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace sparsekv {

absl::StatusOr<sockaddr_in> ParseIpv4Listen(const std::string& text, const std::string& key,
                                            const std::string& example) {
  auto colon = text.rfind(':');
  int port = 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (colon == std::string::npos || !absl::SimpleAtoi(text.substr(colon + 1), &port) || port < 0 ||
      port > 65535 || inet_pton(AF_INET, text.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: '%s' is not IPV4:PORT (like %s)", key, text, example));
  }
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

}  // namespace sparsekv
