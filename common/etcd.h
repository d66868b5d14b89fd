// A small etcd v3 client over etcd's own gRPC API (proto/etcd), for the cluster layer: ranges,
// puts, the two transactions the directory needs (create-if-absent, compare-and-swap on a key's
// revision), and leases (grant, keep-alive, revoke).
//
// Why gRPC and not the JSON gateway: gRPC is etcd's primary API and the one its own clients use;
// sparsekv already links gRPC and protobuf, so this costs two .proto files and no HTTP client.
//
// Several endpoints may be given (an etcd cluster): a call that finds its endpoint unreachable
// tries the next one. Every call has a deadline; errors are UNAVAILABLE or DEADLINE_EXCEEDED
// naming the endpoint and the call. Thread-safe.
#ifndef SPARSEKV_COMMON_ETCD_H_
#define SPARSEKV_COMMON_ETCD_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace etcdserverpb {
class RangeRequest;
class RangeResponse;
class TxnRequest;
class TxnResponse;
}  // namespace etcdserverpb

namespace sparsekv {

// etcd://HOST:PORT[,HOST:PORT...]/NAME
struct ClusterUrl {
  std::vector<std::string> endpoints;
  std::string name;
  std::string prefix() const { return "/sparsekv/" + name + "/"; }
  std::string ToString() const;
};
absl::StatusOr<ClusterUrl> ParseClusterUrl(std::string_view url);

struct EtcdKv {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, lease = 0;
};

class EtcdClient {
 public:
  EtcdClient(std::vector<std::string> endpoints, int64_t timeout_ms);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  absl::StatusOr<std::optional<EtcdKv>> Get(const std::string& key);
  // Every key starting with `prefix`, in key order.
  absl::StatusOr<std::vector<EtcdKv>> List(const std::string& prefix);
  absl::Status Put(const std::string& key, const std::string& value, int64_t lease = 0);
  // Puts `value` only if `key` does not exist (one transaction): nullopt when it was created,
  // else the existing key-value.
  absl::StatusOr<std::optional<EtcdKv>> Create(const std::string& key, const std::string& value, int64_t lease = 0);
  // Replaces / deletes the key only while its mod_revision is still `revision` (one
  // transaction): false when someone else changed it first.
  absl::StatusOr<bool> Swap(const std::string& key, int64_t revision, const std::string& value);
  absl::StatusOr<bool> DeleteIf(const std::string& key, int64_t revision);
  absl::Status Delete(const std::string& key);

  absl::StatusOr<int64_t> Grant(int64_t ttl_s);
  // Renews a lease; returns its TTL in seconds. NOT_FOUND once it has expired.
  absl::StatusOr<int64_t> KeepAlive(int64_t lease);
  absl::Status Revoke(int64_t lease);

  const std::vector<std::string>& endpoints() const { return endpoints_; }
  int64_t timeout_ms() const { return timeout_ms_; }

  struct Channels;

 private:
  template <typename Call>
  absl::Status Failover(const char* what, Call&& call);
  absl::Status Range(const etcdserverpb::RangeRequest& request, etcdserverpb::RangeResponse* reply);
  absl::Status Txn(const etcdserverpb::TxnRequest& request, etcdserverpb::TxnResponse* reply);

  std::vector<std::string> endpoints_;
  int64_t timeout_ms_;
  std::unique_ptr<Channels> channels_;
  std::atomic<size_t> current_{0};
};

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_ETCD_H_
