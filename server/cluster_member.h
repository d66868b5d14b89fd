// ClusterMember makes a sparsekvd one node of a cluster on etcd (common/cluster.h has the layout):
//
//  - membership: registers /nodes/ID under an etcd lease it keeps alive, refreshing free bytes,
//    regions and the draining flag every refresh period, and its heartbeat under /seen/ID;
//  - directory: claims a key atomically before a create (one transaction: of two creates of one
//    key anywhere in the cluster, one gets ALREADY_EXISTS), records seals, and removes this
//    node from the entries of regions that leave it (delete, eviction, TTL, abandoned writer);
//  - replicas: copies sealed regions to other nodes, daemon to daemon over the data path (this
//    node reads its own pool and writes through libsparsekv to the target, which lists itself
//    once its copy is sealed with the same checksum);
//  - etcd loss: regions here keep serving; cluster creates are refused with UNAVAILABLE naming
//    etcd; logged once; when etcd is back the node registers again and reconciles the directory
//    with what it holds (republishing restored regions, dropping entries of regions it lost).
#ifndef SPARSEKV_SERVER_CLUSTER_MEMBER_H_
#define SPARSEKV_SERVER_CLUSTER_MEMBER_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/cluster.h"
#include "common/config.h"
#include "server/region_table.h"

namespace sparsekv {

// Whether a directory entry lists `node` among the region's holders.
bool Lists(const v1::ClusterRegionEntry& entry, const std::string& node);

class ClusterMember : public RegionObserver {
 public:
  struct Options {
    ClusterUrl url;
    std::string node_id;
    std::string control;  // advertised control-plane HOST:PORT
    std::string data;     // tcp-gather HOST:PORT or ""
    std::vector<std::string> transports;
    std::string zone;
    int64_t ttl_s = 10;
    int64_t refresh_ms = 2000;
    std::string token;    // presented to peers when copying replicas
  };
  // Makes the member before the control plane serves (so every create goes through it; until
  // Run it refuses cluster creates as not registered).
  static absl::StatusOr<std::unique_ptr<ClusterMember>> Create(Options options, RegionTable* table);
  // Starts the membership threads once the control plane listens on `control` (HOST:PORT, the
  // bound port); does not wait for etcd (a node starts and serves without it).
  void Run(const std::string& control);
  ~ClusterMember() override;  // leaves: revokes the node's lease

  // The id from config, else <state_dir>/node_id (written once), else random for this run.
  static absl::StatusOr<std::string> ResolveNodeId(const std::string& configured, const std::string& state_dir);

  // Before a create: claims `key` for this node. ALREADY_EXISTS naming the holder; UNAVAILABLE
  // while etcd cannot be reached (placements are refused, not guessed).
  absl::Status Claim(const v1::CreateRegionRequest& request);
  // After the create that followed a successful Claim: `created` false gives the claim back.
  void OnClaimed(const std::string& key, bool created);
  // After a seal: records it; a replica lists itself; the primary starts copying replicas.
  void OnSealed(const v1::RegionInfo& info);
  // Copies a sealed region here to other nodes until `replicas` live copies exist.
  absl::StatusOr<v1::ReplicateRegionResponse> Replicate(const v1::ReplicateRegionRequest& request);

  void OnRemoved(const std::string& key) override;
  // After a delete through this node: the entry drops this node before the call returns.
  void OnDeleted(const std::string& key);

  const std::string& node_id() const { return options_.node_id; }
  bool connected() const { return registered_.load(); }
  void FillStats(v1::StatsResponse* stats);
  // Prometheus lines (sparsekv_cluster_*).
  std::string Metrics();
  void RefreshSoon();  // after drain on/off

 private:
  ClusterMember(Options options, RegionTable* table);
  void Loop();
  absl::Status Register();
  absl::Status PublishSelf();
  absl::Status Reconcile();
  absl::Status ApplyPending();
  void ReplicationLoop();
  // Read-modify-write of the directory entry of `key` under compare-and-swap, retried while
  // others change it. `edit` changes the entry (exists: whether there was one) and says what to
  // store; an error from it stops the update.
  enum class EntryChange { kNone, kPut, kDelete };
  using EntryEdit = std::function<absl::StatusOr<EntryChange>(v1::ClusterRegionEntry* entry, bool exists)>;
  absl::Status EditEntry(const std::string& key, const EntryEdit& edit);
  // Adds or removes this node in the entry of `key`.
  absl::Status ListSelf(const std::string& key, const v1::RegionInfo* local);
  absl::Status UnlistSelf(const std::string& key);
  absl::Status CopyTo(const v1::ClusterNode& target, const std::string& key, uint64_t checksum, int64_t* bytes);
  absl::Status Unavailable(const std::string& what) const;

  Options options_;
  RegionTable* table_;
  ClusterKeys keys_;
  std::unique_ptr<EtcdClient> etcd_;
  int64_t started_unix_ms_;

  std::atomic<bool> registered_{false};
  std::atomic<int64_t> lease_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool refresh_now_ = false;
  bool resync_ = false;                // a directory update failed: reconcile when etcd answers
  std::set<std::string> claiming_;     // claimed, create in progress
  std::deque<std::string> removed_;    // keys that left this node
  std::deque<v1::RegionInfo> sealed_;  // seals to record
  std::deque<std::pair<std::string, int32_t>> replicate_;  // sealed primaries: key, copies wanted
  std::string last_error_;             // why not registered ("" : registered)
  int64_t directory_entries_ = 0;
  int64_t claims_ = 0, claims_refused_ = 0, replicas_copied_ = 0, replica_bytes_ = 0, replica_failures_ = 0;

  std::thread thread_;
  std::thread replicator_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_CLUSTER_MEMBER_H_
