#include "common/fabric_util.h"

#include <rdma/fi_errno.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sparsekv {

absl::Status FabricError(int rc, const std::string& what) {
  const int e = rc < 0 ? -rc : rc;
  std::string message = absl::StrCat(what, ": ", fi_strerror(e), " (FI_E", e, ")");
  switch (e) {
    case FI_ETIMEDOUT:
      return absl::DeadlineExceededError(message);
    case FI_ECONNREFUSED:
    case FI_ECONNRESET:
    case FI_ECONNABORTED:
    case FI_ENOTCONN:
    case FI_EHOSTUNREACH:
    case FI_ENETDOWN:
    case FI_ENETUNREACH:
    case FI_ESHUTDOWN:
    case FI_ECANCELED:  // in flight when the connection was lost
    case FI_EIO:
      return absl::UnavailableError(message);
    case FI_EACCES:
    case FI_EPERM:
    case FI_EKEYREJECTED:
      return absl::PermissionDeniedError(message);
    case FI_EINVAL:
    case FI_EMSGSIZE:
    case FI_EADDRNOTAVAIL:
    case FI_ENOSYS:
    case FI_EOPNOTSUPP:
      return absl::InvalidArgumentError(message);
    case FI_ENOMEM:
    case FI_ENOSPC:
    case FI_ETOOSMALL:
      return absl::ResourceExhaustedError(message);
    case FI_ENODATA:
      return absl::NotFoundError(message);
    default:
      return absl::InternalError(message);
  }
}

bool IsSoftwareRmaProvider(const std::string& provider) {
  for (absl::string_view part : absl::StrSplit(provider, ';')) {
    if (part == "tcp" || part == "sockets" || part == "udp" || part == "net") return true;
  }
  return false;
}

}  // namespace sparsekv
