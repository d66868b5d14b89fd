// The cluster's layout in etcd and the rules every member and client applies to it.
//
//   /sparsekv/NAME/nodes/ID     ClusterNode (JSON), under the node's etcd lease: present while the
//                               node is alive and reaches etcd
//   /sparsekv/NAME/seen/ID      last heartbeat of the node (unix ms), no lease: says when a lost
//                               node left
//   /sparsekv/NAME/regions/KEY  ClusterRegionEntry (JSON), no lease: key -> nodes holding it
//
// Placement is weighted rendezvous hashing: every node that is registered, not draining and has
// room scores hash(key, node) weighted by its free bytes; the highest score holds the region,
// the next ones its replicas. The same key lands on the same node while the membership holds,
// and a node's share of new regions follows its free capacity.
#ifndef SPARSEKV_COMMON_CLUSTER_H_
#define SPARSEKV_COMMON_CLUSTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/etcd.h"
#include "sparsekv/v1/control.pb.h"

namespace sparsekv {

struct ClusterKeys {
  std::string prefix;  // /sparsekv/NAME/
  std::string nodes() const { return prefix + "nodes/"; }
  std::string node(const std::string& id) const { return nodes() + id; }
  std::string seen() const { return prefix + "seen/"; }
  std::string seen(const std::string& id) const { return seen() + id; }
  std::string regions() const { return prefix + "regions/"; }
  std::string region(const std::string& key) const { return regions() + key; }
};

std::string ToJson(const google::protobuf::Message& message);
absl::Status FromJson(const std::string& json, const std::string& what, google::protobuf::Message* message);

struct RegionShape {
  int32_t layers = 0;
  int32_t entry_bytes = 0;
  int64_t tokens = 0;
  // Bytes it takes on a node with `page_bytes` pages (entries padded to 64-byte cache lines).
  int64_t Footprint(int64_t page_bytes) const;
};

// Nodes that may take a region of this shape, best first (weighted rendezvous). `exclude`: node
// ids to leave out (holders already, for replicas).
std::vector<v1::ClusterNode> RankNodes(const std::string& key, const std::vector<v1::ClusterNode>& nodes,
                                       const RegionShape& shape, const std::vector<std::string>& exclude = {});

// The registered nodes and their last heartbeats.
struct ClusterView {
  std::vector<v1::ClusterNode> nodes;
  std::vector<std::pair<std::string, int64_t>> seen;  // id -> unix ms
  const v1::ClusterNode* Find(const std::string& id) const;
  int64_t LastSeen(const std::string& id) const;  // 0: never
  // "node n2 left the cluster: last heartbeat 2026-11-27 16:03:04 UTC, 8.2 s ago"
  std::string DescribeGone(const std::string& id) const;
};
absl::StatusOr<ClusterView> ReadClusterView(EtcdClient* etcd, const ClusterKeys& keys);

int64_t UnixMs();

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_CLUSTER_H_
