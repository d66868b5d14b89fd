// sparsekvctl --cluster URL ...: the cluster's view from etcd, and the per-node calls behind it.
#include "server/ctl/cluster_ctl.h"

#include <cstdio>
#include <map>
#include <set>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cluster.h"
#include "common/grpc_status.h"
#include "common/size_parse.h"
#include "sparsekv/v1/control.grpc.pb.h"

namespace sparsekv {
namespace {

constexpr int kExitRefused = 1, kExitUsage = 2, kExitUnreachable = 3;

struct Ctx {
  ClusterUrl url;
  ClusterKeys keys;
  std::unique_ptr<EtcdClient> etcd;
  bool json = false;
  int64_t timeout_ms = 5000;
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string token;

  std::unique_ptr<v1::Control::Stub> Stub(const v1::ClusterNode& node) const {
    return v1::Control::NewStub(grpc::CreateChannel(node.control(), credentials));
  }
  std::unique_ptr<grpc::ClientContext> Call(int64_t ms = 0) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms > 0 ? ms : timeout_ms));
    return ctx;
  }
};

int EtcdFail(const Ctx& c, const absl::Status& s) {
  std::fprintf(stderr, "sparsekvctl: cluster '%s': etcd (%s) cannot be reached: %s\n", c.url.name.c_str(),
               absl::StrJoin(c.url.endpoints, ",").c_str(), std::string(s.message()).c_str());
  return kExitUnreachable;
}

int NodeFail(const v1::ClusterNode& node, const grpc::Status& status) {
  absl::Status s = FromGrpcStatus(status);
  std::fprintf(stderr, "sparsekvctl: node %s (%s): %s: %s\n", node.id().c_str(), node.control().c_str(),
               absl::StatusCodeToString(s.code()).c_str(), std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded
             ? kExitUnreachable
             : kExitRefused;
}

std::string Ago(int64_t unix_ms) {
  if (unix_ms == 0) return "never";
  return absl::StrFormat("%.1fs ago", (UnixMs() - unix_ms) / 1000.0);
}

std::vector<v1::ClusterRegionEntry> Entries(const std::vector<EtcdKv>& kvs) {
  std::vector<v1::ClusterRegionEntry> out;
  for (const auto& kv : kvs) {
    v1::ClusterRegionEntry e;
    if (FromJson(kv.value, kv.key, &e).ok()) out.push_back(std::move(e));
  }
  return out;
}

// "ok", "degraded" (fewer live copies than wanted) or "lost" (no live copy).
std::string EntryState(const v1::ClusterRegionEntry& e, const ClusterView& view, int* live_out) {
  int live = 0;
  for (const auto& id : e.nodes()) live += view.Find(id) != nullptr ? 1 : 0;
  if (live_out != nullptr) *live_out = live;
  if (live == 0) return "lost";
  if (e.sealed() && live < std::max(1, e.replicas())) return "degraded";
  return "ok";
}

int Nodes(const Ctx& c, const ClusterView& view) {
  std::set<std::string> live;
  if (c.json) {
    std::string out = "[";
    for (const auto& n : view.nodes) {
      live.insert(n.id());
      absl::StrAppend(&out, out.size() > 1 ? "," : "", "{\"state\":\"", n.draining() ? "draining" : "serving",
                      "\",\"node\":", ToJson(n), ",\"last_heartbeat_unix_ms\":", view.LastSeen(n.id()), "}");
    }
    for (const auto& [id, ms] : view.seen) {
      if (live.count(id) == 0) {
        absl::StrAppend(&out, out.size() > 1 ? "," : "", "{\"state\":\"lost\",\"node\":{\"id\":\"", id,
                        "\"},\"last_heartbeat_unix_ms\":", ms, "}");
      }
    }
    std::printf("%s]\n", out.c_str());
    return 0;
  }
  std::printf("%-14s %-22s %-8s %10s %10s %10s %8s %7s %-9s %s\n", "NODE", "CONTROL", "ZONE", "POOL", "USED", "FREE",
              "REGIONS", "LEASES", "STATE", "HEARTBEAT");
  for (const auto& n : view.nodes) {
    live.insert(n.id());
    std::printf("%-14s %-22s %-8s %10s %10s %10s %8lld %7lld %-9s %s\n", n.id().c_str(), n.control().c_str(),
                n.zone().empty() ? "-" : n.zone().c_str(), FormatBytes(n.pool_bytes()).c_str(),
                FormatBytes(n.used_bytes()).c_str(), FormatBytes(n.free_bytes()).c_str(),
                static_cast<long long>(n.regions()), static_cast<long long>(n.active_leases()),
                n.draining() ? "draining" : "serving", Ago(view.LastSeen(n.id())).c_str());
  }
  for (const auto& [id, ms] : view.seen) {
    if (live.count(id) == 0) {
      std::printf("%-14s %-22s %-8s %10s %10s %10s %8s %7s %-9s %s\n", id.c_str(), "-", "-", "-", "-", "-", "-", "-",
                  "lost", Ago(ms).c_str());
    }
  }
  return 0;
}

int Status(const Ctx& c, const ClusterView& view, const std::vector<v1::ClusterRegionEntry>& entries) {
  int64_t pool = 0, used = 0, free = 0, regions = 0, leases = 0, draining = 0;
  for (const auto& n : view.nodes) {
    pool += n.pool_bytes();
    used += n.used_bytes();
    free += n.free_bytes();
    regions += n.regions();
    leases += n.active_leases();
    draining += n.draining() ? 1 : 0;
  }
  std::set<std::string> live_ids;
  for (const auto& n : view.nodes) live_ids.insert(n.id());
  int64_t lost_nodes = 0;
  for (const auto& [id, ms] : view.seen) lost_nodes += live_ids.count(id) == 0 ? 1 : 0;
  int64_t lost = 0, degraded = 0;
  for (const auto& e : entries) {
    const std::string state = EntryState(e, view, nullptr);
    lost += state == "lost";
    degraded += state == "degraded";
  }
  if (c.json) {
    std::printf(
        "{\"cluster\":\"%s\",\"nodes\":%zu,\"nodes_draining\":%lld,\"nodes_lost\":%lld,\"pool_bytes\":%lld,"
        "\"used_bytes\":%lld,\"free_bytes\":%lld,\"regions_on_nodes\":%lld,\"directory_entries\":%zu,"
        "\"regions_lost\":%lld,\"regions_degraded\":%lld,\"active_leases\":%lld}\n",
        c.url.ToString().c_str(), view.nodes.size(), static_cast<long long>(draining), static_cast<long long>(lost_nodes),
        static_cast<long long>(pool), static_cast<long long>(used), static_cast<long long>(free),
        static_cast<long long>(regions), entries.size(), static_cast<long long>(lost), static_cast<long long>(degraded),
        static_cast<long long>(leases));
    return 0;
  }
  std::printf("cluster:   %s\n", c.url.ToString().c_str());
  std::printf("nodes:     %zu live (%lld draining), %lld lost\n", view.nodes.size(), static_cast<long long>(draining),
              static_cast<long long>(lost_nodes));
  std::printf("pool:      %s in all, %s used, %s free\n", FormatBytes(pool).c_str(), FormatBytes(used).c_str(),
              FormatBytes(free).c_str());
  std::printf("regions:   %zu in the directory, %lld on live nodes (copies included); %lld lost, %lld with fewer "
              "copies than wanted\n",
              entries.size(), static_cast<long long>(regions), static_cast<long long>(lost),
              static_cast<long long>(degraded));
  std::printf("leases:    %lld active\n", static_cast<long long>(leases));
  return 0;
}

int Regions(const Ctx& c, const ClusterView& view, const std::vector<v1::ClusterRegionEntry>& entries) {
  if (c.json) {
    std::string out = "[";
    for (const auto& e : entries) {
      int live = 0;
      const std::string state = EntryState(e, view, &live);
      absl::StrAppend(&out, out.size() > 1 ? "," : "", "{\"state\":\"", state, "\",\"live_copies\":", live,
                      ",\"entry\":", ToJson(e), "}");
    }
    std::printf("%s]\n", out.c_str());
    return 0;
  }
  std::printf("%-32s %-28s %-7s %-8s %10s %s\n", "KEY", "NODES", "SEALED", "COPIES", "BYTES", "STATE");
  for (const auto& e : entries) {
    int live = 0;
    const std::string state = EntryState(e, view, &live);
    std::printf("%-32s %-28s %-7s %-8s %10s %s\n", e.key().c_str(), absl::StrJoin(e.nodes(), ",").c_str(),
                e.sealed() ? "yes" : "no", absl::StrFormat("%d/%d", live, std::max(1, e.replicas())).c_str(),
                FormatBytes(e.bytes()).c_str(), state.c_str());
  }
  return 0;
}

int Drain(const Ctx& c, const ClusterView& view, const std::vector<std::string>& args) {
  if (args.empty()) return kExitUsage;
  const std::string id = args[0];
  bool off = false, move = false;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--off") off = true;
    else if (args[i] == "--move") move = true;
    else {
      std::fprintf(stderr, "sparsekvctl: drain: unknown argument '%s'\n", args[i].c_str());
      return kExitUsage;
    }
  }
  const v1::ClusterNode* node = view.Find(id);
  if (node == nullptr) {
    std::fprintf(stderr, "sparsekvctl: %s\n", view.DescribeGone(id).c_str());
    return kExitRefused;
  }
  auto stub = c.Stub(*node);
  v1::DrainRequest request;
  request.set_enable(!off);
  v1::DrainResponse reply;
  if (auto s = stub->Drain(c.Call().get(), request, &reply); !s.ok()) return NodeFail(*node, s);
  std::printf("node %s: %s\n", id.c_str(), reply.draining() ? "draining: no new regions are placed on it" : "accepting new regions");
  if (!move || off) return 0;
  v1::ListRegionsRequest list;
  list.set_limit(10000);
  v1::ListRegionsResponse regions;
  if (auto s = stub->ListRegions(c.Call().get(), list, &regions); !s.ok()) return NodeFail(*node, s);
  int moved = 0, stayed = 0, failed = 0;
  for (const auto& r : regions.regions()) {
    if (!r.sealed()) {
      std::printf("  %s: stays (unsealed: its writer may still add to it)\n", r.key().c_str());
      ++stayed;
      continue;
    }
    v1::ReplicateRegionRequest copy;
    copy.set_key(r.key());
    auto entry = c.etcd->Get(c.keys.region(r.key()));
    int32_t want = 1;
    if (entry.ok() && *entry) {
      v1::ClusterRegionEntry e;
      if (FromJson((*entry)->value, (*entry)->key, &e).ok()) want = std::max(1, e.replicas());
    }
    copy.set_replicas(want);
    copy.set_exclude_self(true);
    v1::ReplicateRegionResponse copied;
    if (auto s = stub->ReplicateRegion(c.Call(600000).get(), copy, &copied); !s.ok()) {
      std::printf("  %s: not moved: %s\n", r.key().c_str(), s.error_message().c_str());
      ++failed;
      continue;
    }
    v1::DeleteRegionRequest del;
    del.set_key(r.key());
    v1::DeleteRegionResponse deleted;
    if (auto s = stub->DeleteRegion(c.Call().get(), del, &deleted); !s.ok()) {
      std::printf("  %s: copied to %s, but not deleted here: %s\n", r.key().c_str(),
                  absl::StrJoin(copied.nodes(), ",").c_str(), s.error_message().c_str());
      ++failed;
      continue;
    }
    std::printf("  %s: moved (%s copied; now on %s)\n", r.key().c_str(), FormatBytes(copied.copied_bytes()).c_str(),
                absl::StrJoin(copied.nodes(), ",").c_str());
    ++moved;
  }
  std::printf("node %s: %d regions moved, %d stayed (unsealed), %d failed%s\n", id.c_str(), moved, stayed, failed,
              regions.truncated() ? "; it holds more than one listing (10000): run drain --move again" : "");
  return failed > 0 ? kExitRefused : 0;
}

int Replicate(const Ctx& c, const ClusterView& view, const std::vector<std::string>& args) {
  int32_t replicas = 0;
  if (args.size() != 2 || !absl::SimpleAtoi(args[1], &replicas)) return kExitUsage;
  auto kv = c.etcd->Get(c.keys.region(args[0]));
  if (!kv.ok()) return EtcdFail(c, kv.status());
  if (!*kv) {
    std::fprintf(stderr, "sparsekvctl: no region '%s' in cluster '%s'\n", args[0].c_str(), c.url.name.c_str());
    return kExitRefused;
  }
  v1::ClusterRegionEntry e;
  (void)FromJson((*kv)->value, (*kv)->key, &e);
  for (const auto& id : e.nodes()) {
    const auto* node = view.Find(id);
    if (node == nullptr) continue;
    v1::ReplicateRegionRequest request;
    request.set_key(args[0]);
    request.set_replicas(replicas);
    v1::ReplicateRegionResponse reply;
    if (auto s = c.Stub(*node)->ReplicateRegion(c.Call(600000).get(), request, &reply); !s.ok()) return NodeFail(*node, s);
    std::printf("region %s is on %s (%s copied)\n", args[0].c_str(), absl::StrJoin(reply.nodes(), ",").c_str(),
                FormatBytes(reply.copied_bytes()).c_str());
    return 0;
  }
  std::fprintf(stderr, "sparsekvctl: region '%s' has no live copy\n", args[0].c_str());
  return kExitRefused;
}

}  // namespace

int ClusterMain(const std::string& url_text, const std::vector<std::string>& rest, bool json, int64_t timeout_ms,
                std::shared_ptr<grpc::ChannelCredentials> credentials, const std::string& token) {
  auto url = ParseClusterUrl(url_text);
  if (!url.ok()) {
    std::fprintf(stderr, "sparsekvctl: %s\n", std::string(url.status().message()).c_str());
    return kExitUsage;
  }
  Ctx c{*url, ClusterKeys{url->prefix()}, std::make_unique<EtcdClient>(url->endpoints, timeout_ms), json, timeout_ms,
        std::move(credentials), token};
  const std::string& command = rest[0];
  const std::vector<std::string> args(rest.begin() + 1, rest.end());
  auto view = ReadClusterView(c.etcd.get(), c.keys);
  if (!view.ok()) return EtcdFail(c, view.status());
  if (command == "nodes") return Nodes(c, *view);
  if (command == "status" || command == "regions") {
    auto kvs = c.etcd->List(c.keys.region(command == "regions" && !args.empty() ? args[0] : ""));
    if (!kvs.ok()) return EtcdFail(c, kvs.status());
    const auto entries = Entries(*kvs);
    return command == "status" ? Status(c, *view, entries) : Regions(c, *view, entries);
  }
  if (command == "drain") {
    int rc = Drain(c, *view, args);
    if (rc == kExitUsage) std::fprintf(stderr, "usage: sparsekvctl --cluster URL drain NODE [--move] [--off]\n");
    return rc;
  }
  if (command == "replicate") {
    int rc = Replicate(c, *view, args);
    if (rc == kExitUsage) std::fprintf(stderr, "usage: sparsekvctl --cluster URL replicate KEY COPIES\n");
    return rc;
  }
  std::fprintf(stderr,
               "sparsekvctl: '%s' is not a cluster command (with --cluster: status, nodes, regions [PREFIX], "
               "drain NODE [--move] [--off], replicate KEY COPIES)\n",
               command.c_str());
  return kExitUsage;
}

}  // namespace sparsekv
