#include "common/cluster.h"

#include <chrono>
#include <algorithm>
#include <cmath>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"

namespace sparsekv {

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

absl::Status FromJson(const std::string& json, const std::string& what, google::protobuf::Message* message) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // records written by newer members
  auto status = google::protobuf::util::JsonStringToMessage(json, message, options);
  if (!status.ok()) {
    return absl::DataLossError(absl::StrFormat("etcd record %s is not a %s: %s", what,
                                               message->GetDescriptor()->name(), std::string(status.message())));
  }
  return absl::OkStatus();
}

int64_t RegionShape::Footprint(int64_t page_bytes) const {
  if (layers <= 0 || entry_bytes <= 0 || page_bytes <= 0) return 0;
  const int64_t stride = (static_cast<int64_t>(entry_bytes) + 63) / 64 * 64;
  const int64_t per_page = std::max<int64_t>(1, page_bytes / stride);
  const int64_t pages = (std::max<int64_t>(tokens, 1) + per_page - 1) / per_page;
  return layers * pages * page_bytes;
}

namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

uint64_t Hash(const std::string& key, const std::string& node) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over key, a separator, node
  for (unsigned char c : key) h = (h ^ c) * 0x100000001b3ull;
  h = (h ^ 0xff) * 0x100000001b3ull;
  for (unsigned char c : node) h = (h ^ c) * 0x100000001b3ull;
  return Mix(h);
}

}  // namespace

std::vector<v1::ClusterNode> RankNodes(const std::string& key, const std::vector<v1::ClusterNode>& nodes,
                                       const RegionShape& shape, const std::vector<std::string>& exclude) {
  std::vector<std::pair<double, const v1::ClusterNode*>> scored;
  for (const auto& node : nodes) {
    if (node.draining() || node.free_bytes() <= 0 || node.free_bytes() < shape.Footprint(node.page_bytes())) continue;
    if (std::find(exclude.begin(), exclude.end(), node.id()) != exclude.end()) continue;
    // u in (0, 1); score = w / -ln(u): the highest score wins with probability w / sum(w).
    const double u = (static_cast<double>(Hash(key, node.id()) >> 11) + 0.5) / 9007199254740992.0;
    scored.emplace_back(static_cast<double>(node.free_bytes()) / -std::log(u), &node);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second->id() < b.second->id();
  });
  std::vector<v1::ClusterNode> out;
  for (const auto& [score, node] : scored) out.push_back(*node);
  return out;
}

const v1::ClusterNode* ClusterView::Find(const std::string& id) const {
  for (const auto& node : nodes) {
    if (node.id() == id) return &node;
  }
  return nullptr;
}

int64_t ClusterView::LastSeen(const std::string& id) const {
  for (const auto& [node, ms] : seen) {
    if (node == id) return ms;
  }
  return 0;
}

std::string ClusterView::DescribeGone(const std::string& id) const {
  const int64_t last = LastSeen(id);
  if (last == 0) return absl::StrFormat("node %s is not in the cluster (never seen)", id);
  return absl::StrFormat("node %s left the cluster: last heartbeat %s, %.1f s ago", id,
                         absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixMillis(last), absl::UTCTimeZone()),
                         (UnixMs() - last) / 1000.0);
}

absl::StatusOr<ClusterView> ReadClusterView(EtcdClient* etcd, const ClusterKeys& keys) {
  ClusterView view;
  auto nodes = etcd->List(keys.nodes());
  if (!nodes.ok()) return nodes.status();
  for (const auto& kv : *nodes) {
    v1::ClusterNode node;
    if (!FromJson(kv.value, kv.key, &node).ok()) continue;  // a record we cannot read is not a node
    view.nodes.push_back(std::move(node));
  }
  auto seen = etcd->List(keys.seen());
  if (!seen.ok()) return seen.status();
  for (const auto& kv : *seen) {
    int64_t ms = 0;
    if (absl::SimpleAtoi(kv.value, &ms)) view.seen.emplace_back(kv.key.substr(keys.seen().size()), ms);
  }
  return view;
}

}  // namespace sparsekv
