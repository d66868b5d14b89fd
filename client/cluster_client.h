// The client's view of a cluster (ClientOptions::cluster): etcd for membership and the region
// directory, one libsparsekv Client per node, connected on first use. Internal to libsparsekv.
#ifndef SPARSEKV_CLIENT_CLUSTER_CLIENT_H_
#define SPARSEKV_CLIENT_CLUSTER_CLIENT_H_

#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/worker_pool.h"
#include "common/cluster.h"
#include "sparsekv/client.h"

namespace sparsekv {

class ClusterClient {
 public:
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Make(const ClientOptions& options);
  ~ClusterClient();

  absl::StatusOr<std::shared_ptr<Region>> Create(const RegionSpec& spec);
  absl::StatusOr<std::shared_ptr<Region>> Open(const std::string& key, bool for_write);
  absl::Status Delete(const std::string& key);
  absl::StatusOr<std::vector<RegionInfo>> List(const std::string& prefix);
  absl::StatusOr<PoolStats> Stats();
  absl::StatusOr<std::vector<NodeInfo>> Nodes();
  absl::Status Replicate(const std::string& key, int32_t replicas);
  absl::Status RegisterBuffer(void* addr, size_t bytes);
  absl::Status UnregisterBuffer(void* addr);

  // Node clients connected so far (FetchBatch groups its items by them).
  std::vector<std::pair<std::string, Client*>> Connected();
  WorkerPool* workers() { return &workers_; }
  const ClusterUrl& url() const { return url_; }

 private:
  ClusterClient(const ClientOptions& options, ClusterUrl url);
  absl::StatusOr<Client*> NodeClient(const v1::ClusterNode& node);
  // Membership, re-read when older than `max_age_ms` (0: always); when etcd cannot be reached,
  // the last one seen if `stale_if_unreachable`, else UNAVAILABLE naming etcd.
  absl::StatusOr<ClusterView> View(int64_t max_age_ms, bool stale_if_unreachable);
  // The directory entry of `key` (nullopt: none); the last one seen when etcd cannot be reached.
  absl::StatusOr<std::optional<v1::ClusterRegionEntry>> Entry(const std::string& key, int64_t* revision = nullptr);
  absl::Status EtcdDown(const absl::Status& status, const std::string& what) const;
  // This client's namespace in the daemons ("TENANT/" with tenants, else ""), which prefixes its
  // keys in the directory; learned from the first node asked.
  absl::StatusOr<std::string> Namespace();

  ClientOptions options_;  // per node, with server set
  ClusterUrl url_;
  ClusterKeys keys_;
  std::unique_ptr<EtcdClient> etcd_;
  std::string host_id_;
  WorkerPool workers_;

  absl::Mutex mu_;
  struct Node {
    std::string control;
    std::unique_ptr<Client> client;
  };
  std::map<std::string, Node> nodes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Client>> retired_ ABSL_GUARDED_BY(mu_);  // a node that moved: its handles live on
  std::map<void*, size_t> buffers_ ABSL_GUARDED_BY(mu_);
  ClusterView view_ ABSL_GUARDED_BY(mu_);
  int64_t view_ms_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, v1::ClusterRegionEntry> entries_ ABSL_GUARDED_BY(mu_);  // last seen, for etcd outages
  std::optional<std::string> namespace_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_CLUSTER_CLIENT_H_
