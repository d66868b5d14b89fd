// Tenants and their bearer tokens, from the file [auth] tenants_file names. Without that file the
// daemon has one implicit tenant and no authentication (it then binds to loopback by default).
//
//   [tenants.team-a]
//   tokens = ["<random secret>"]   # bearer tokens of this tenant (any number)
//   quota = "8GiB"                  # pool bytes it may hold (default: no limit)
//   max_regions = 1000              # regions it may hold (default: no limit)
//   guarantee = "2GiB"              # eviction for other tenants never takes it below this
//   socket_mode = "0660"            # its arena's shared-memory socket (see README "Security")
//   socket_group = "team-a"
//   [admin]
//   tokens = ["<random secret>"]   # sparsekvctl's role: sees and manages every tenant
//
// The file must not be readable by others (mode 0600 or 0640). Tokens are never logged.
#ifndef SPARSEKV_SERVER_AUTH_H_
#define SPARSEKV_SERVER_AUTH_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace sparsekv {

struct TenantPolicy {
  int64_t quota_bytes = 0;      // 0: no limit
  int64_t max_regions = 0;      // 0: no limit
  int64_t guarantee_bytes = 0;  // protected from eviction on behalf of other tenants
  // The arena's shared-memory socket (memfd pools, tenants with a quota): file mode and group.
  int socket_mode = 0660;
  std::string socket_group;     // "" : the daemon's group
};

// Who is calling: a tenant (its regions only) or the admin (every tenant; region keys are then
// written TENANT/KEY).
struct Caller {
  std::string tenant;  // "" for the admin and when authentication is off
  bool admin = false;
};

class TenantDirectory {
 public:
  static absl::StatusOr<TenantDirectory> Load(const std::string& path);

  // The caller a bearer token belongs to; UNAUTHENTICATED (never naming the token) otherwise.
  absl::StatusOr<Caller> Authenticate(const std::string& authorization_header) const;
  const std::map<std::string, TenantPolicy>& tenants() const { return policies_; }
  size_t token_count() const { return callers_.size(); }

 private:
  std::map<std::string, Caller> callers_;  // token -> caller
  std::map<std::string, TenantPolicy> policies_;
};

// A tenant name: 1-64 of [A-Za-z0-9_.-]. Region keys are stored as TENANT/KEY.
bool ValidTenantName(const std::string& name);

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_AUTH_H_
