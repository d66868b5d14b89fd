#include "server/control_service.h"

#include <chrono>

#include "common/config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/grpc_status.h"

namespace sparsekv {

namespace {

// Where a caller's keys live: "TENANT/" for a tenant, "" for the admin (who writes TENANT/KEY)
// and when authentication is off.
std::string PrefixOf(const Caller& caller) { return caller.admin ? std::string() : caller.tenant + "/"; }

// A tenant never sees its namespace prefix, in keys or in messages.
absl::Status HideTenantPrefix(const absl::Status& status, const std::string& prefix) {
  if (status.ok() || prefix.empty()) return status;
  return absl::Status(status.code(), absl::StrReplaceAll(status.message(), {{"'" + prefix, "'"}}));
}

void HideTenantPrefix(v1::RegionInfo* info, const std::string& prefix) {
  if (!prefix.empty() && absl::StartsWith(info->key(), prefix)) info->set_key(info->key().substr(prefix.size()));
}

absl::StatusOr<std::string> WithTenantPrefix(const std::string& key, const std::string& prefix) {
  if (key.empty()) return absl::InvalidArgumentError("region key is empty");
  return prefix + key;
}

// The call's deadline on the steady clock, less a margin for the reply, capped at a minute (a
// call without a deadline waits that long at most for quarantined pages).
std::chrono::steady_clock::time_point SteadyDeadline(const grpc::ServerContext* ctx) {
  const auto now_sys = std::chrono::system_clock::now();
  const auto now = std::chrono::steady_clock::now();
  auto left = ctx->deadline() - now_sys - std::chrono::milliseconds(50);
  left = std::min<std::chrono::system_clock::duration>(left, std::chrono::minutes(1));
  if (left <= std::chrono::system_clock::duration::zero()) return now;
  return now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
}

absl::Status AdminOnly(const Caller& caller, const char* what) {
  if (caller.admin) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(what, " needs the admin role; tenant '", caller.tenant,
                                                  "' may manage its own regions only"));
}

}  // namespace

template <typename Response, typename Handler>
grpc::Status ControlService::Serve(const char* method, grpc::ServerContext* context, Response* response,
                                   Handler&& handler) {
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Response> result;
  Caller caller{"", true};
  if (const auto auth = auth_.load(); auth != nullptr) {
    std::string header;
    const auto& metadata = context->client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) header.assign(it->second.data(), it->second.size());
    auto authenticated = auth->Authenticate(header);
    if (authenticated.ok()) caller = *authenticated;
    else result = authenticated.status();
  }
  if (result.status().code() != absl::StatusCode::kUnauthenticated) {
    const std::string prefix = PrefixOf(caller);
    result = handler(caller, prefix);
    if (!result.ok()) result = HideTenantPrefix(result.status(), prefix);
  }
  absl::Status status = result.status();
  if (result.ok()) *response = *std::move(result);
  metrics_->ObserveRpc(method, status.code(),
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return ToGrpcStatus(status);
}

// Rewrites request.key into the caller's namespace, runs `call`, and maps the reply's key back.
#define SKV_KEYED(Request, call, fix_reply)                                       \
  [&](const Caller& caller, const std::string& prefix) -> decltype(call(*request)) { \
    auto key = WithTenantPrefix(request->key(), prefix);                                     \
    if (!key.ok()) return key.status();                                            \
    Request scoped = *request;                                                     \
    scoped.set_key(*key);                                                          \
    auto reply = call(scoped);                                                     \
    if (reply.ok()) fix_reply;                                                     \
    return reply;                                                                  \
  }

grpc::Status ControlService::CreateRegion(grpc::ServerContext* ctx, const v1::CreateRegionRequest* request,
                                          v1::OpenRegionResponse* response) {
  auto call = [&](const v1::CreateRegionRequest& r) -> absl::StatusOr<v1::OpenRegionResponse> {
    if (cluster_ == nullptr) return table_->Create(r, SteadyDeadline(ctx));
    if (!r.replica_of().empty()) {
      // A peer copying its sealed region here: it lists the copy once the checksums match.
      return table_->Create(r, SteadyDeadline(ctx));
    }
    auto plan = table_->ValidateCreate(r);  // bad requests claim nothing
    if (!plan.ok()) return plan.status();
    if (auto s = cluster_->Claim(r); !s.ok()) return s;
    auto created = table_->Create(r, *plan, SteadyDeadline(ctx));
    cluster_->OnClaimed(r.key(), created.ok());
    return created;
  };
  return Serve("CreateRegion", ctx, response,
               SKV_KEYED(v1::CreateRegionRequest, call, HideTenantPrefix(reply->mutable_info(), prefix)));
}
grpc::Status ControlService::OpenRegion(grpc::ServerContext* ctx, const v1::OpenRegionRequest* request,
                                        v1::OpenRegionResponse* response) {
  auto call = [&](const v1::OpenRegionRequest& r) { return table_->Open(r); };
  return Serve("OpenRegion", ctx, response,
               SKV_KEYED(v1::OpenRegionRequest, call, HideTenantPrefix(reply->mutable_info(), prefix)));
}
grpc::Status ControlService::ExtendRegion(grpc::ServerContext* ctx, const v1::ExtendRegionRequest* request,
                                          v1::ExtendRegionResponse* response) {
  auto call = [&](const v1::ExtendRegionRequest& r) { return table_->Extend(r, SteadyDeadline(ctx)); };
  return Serve("ExtendRegion", ctx, response,
               SKV_KEYED(v1::ExtendRegionRequest, call, HideTenantPrefix(reply->mutable_info(), prefix)));
}
grpc::Status ControlService::CommitRegion(grpc::ServerContext* ctx, const v1::CommitRegionRequest* request,
                                          v1::CommitRegionResponse* response) {
  auto call = [&](const v1::CommitRegionRequest& r) {
    auto committed = table_->Commit(r);
    if (committed.ok() && r.seal() && cluster_ != nullptr) cluster_->OnSealed(committed->info());
    return committed;
  };
  return Serve("CommitRegion", ctx, response,
               SKV_KEYED(v1::CommitRegionRequest, call, HideTenantPrefix(reply->mutable_info(), prefix)));
}
grpc::Status ControlService::RenewLeases(grpc::ServerContext* ctx, const v1::RenewLeasesRequest* request,
                                         v1::RenewLeasesResponse* response) {
  return Serve("RenewLeases", ctx, response, [&](const Caller& caller, const std::string& prefix) {
    auto renewed = table_->Renew(*request, prefix);
    if (renewed.ok()) {
      v1::ClientDataStats stats = request->stats();
      if (!caller.admin) stats.set_client_id(absl::StrCat(caller.tenant, "/", stats.client_id()));
      metrics_->AddClientStats(stats);
    }
    return renewed;
  });
}
grpc::Status ControlService::ReleaseLeases(grpc::ServerContext* ctx, const v1::ReleaseLeasesRequest* request,
                                           v1::ReleaseLeasesResponse* response) {
  return Serve("ReleaseLeases", ctx, response,
               [&](const Caller&, const std::string& prefix) -> absl::StatusOr<v1::ReleaseLeasesResponse> {
                 if (auto s = table_->Release(*request, prefix); !s.ok()) return s;
                 return v1::ReleaseLeasesResponse();
               });
}
grpc::Status ControlService::DeleteRegion(grpc::ServerContext* ctx, const v1::DeleteRegionRequest* request,
                                          v1::DeleteRegionResponse* response) {
  auto call = [&](const v1::DeleteRegionRequest& r) {
    auto deleted = table_->Delete(r);
    if (deleted.ok() && cluster_ != nullptr) cluster_->OnDeleted(r.key());
    return deleted;
  };
  return Serve("DeleteRegion", ctx, response, SKV_KEYED(v1::DeleteRegionRequest, call, (void)0));
}
grpc::Status ControlService::ListRegions(grpc::ServerContext* ctx, const v1::ListRegionsRequest* request,
                                         v1::ListRegionsResponse* response) {
  return Serve("ListRegions", ctx, response,
               [&](const Caller&, const std::string& prefix) -> absl::StatusOr<v1::ListRegionsResponse> {
                 v1::ListRegionsRequest scoped = *request;
                 scoped.set_key_prefix(prefix + request->key_prefix());
                 auto listed = table_->List(scoped);
                 if (listed.ok()) {
                   for (auto& info : *listed->mutable_regions()) HideTenantPrefix(&info, prefix);
                   listed->set_key_prefix(prefix);
                 }
                 return listed;
               });
}
grpc::Status ControlService::GetRegion(grpc::ServerContext* ctx, const v1::GetRegionRequest* request,
                                       v1::RegionInfo* response) {
  auto call = [&](const v1::GetRegionRequest& r) { return table_->Get(r); };
  return Serve("GetRegion", ctx, response, SKV_KEYED(v1::GetRegionRequest, call, HideTenantPrefix(&*reply, prefix)));
}
grpc::Status ControlService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest*,
                                   v1::StatsResponse* response) {
  return Serve("Stats", ctx, response, [&](const Caller& caller, const std::string&) -> absl::StatusOr<v1::StatsResponse> {
    if (auto s = AdminOnly(caller, "Stats (pool-wide figures)"); !s.ok()) return s;
    v1::StatsResponse out = table_->Stats();
    metrics_->FillClientTransports(3 * out.lease_ms(), &out);  // clients report at every renewal
    if (cluster_ != nullptr) cluster_->FillStats(&out);
    return out;
  });
}
grpc::Status ControlService::Evict(grpc::ServerContext* ctx, const v1::EvictRequest* request,
                                   v1::EvictResponse* response) {
  return Serve("Evict", ctx, response, [&](const Caller& caller, const std::string&) -> absl::StatusOr<v1::EvictResponse> {
    if (auto s = AdminOnly(caller, "Evict"); !s.ok()) return s;
    return table_->Evict(*request);
  });
}
grpc::Status ControlService::VerifyRegion(grpc::ServerContext* ctx, const v1::VerifyRegionRequest* request,
                                          v1::VerifyRegionResponse* response) {
  auto call = [&](const v1::VerifyRegionRequest& r) { return table_->Verify(r); };
  return Serve("VerifyRegion", ctx, response, SKV_KEYED(v1::VerifyRegionRequest, call, (void)0));
}
grpc::Status ControlService::Drain(grpc::ServerContext* ctx, const v1::DrainRequest* request,
                                   v1::DrainResponse* response) {
  return Serve("Drain", ctx, response, [&](const Caller& caller, const std::string&) -> absl::StatusOr<v1::DrainResponse> {
    if (auto s = AdminOnly(caller, "Drain"); !s.ok()) return s;
    table_->SetDraining(request->enable());
    if (cluster_ != nullptr) cluster_->RefreshSoon();  // placements see the flag at once
    v1::DrainResponse out;
    out.set_draining(table_->draining());
    return out;
  });
}
grpc::Status ControlService::GetConfig(grpc::ServerContext* ctx, const v1::GetConfigRequest*,
                                       v1::GetConfigResponse* response) {
  return Serve("GetConfig", ctx, response, [&](const Caller& caller, const std::string&) -> absl::StatusOr<v1::GetConfigResponse> {
    if (auto s = AdminOnly(caller, "GetConfig"); !s.ok()) return s;
    v1::GetConfigResponse out;
    out.set_toml(DescribeConfig(table_->config()));
    return out;
  });
}
grpc::Status ControlService::GetMetrics(grpc::ServerContext* ctx, const v1::GetMetricsRequest*,
                                        v1::GetMetricsResponse* response) {
  return Serve("GetMetrics", ctx, response, [&](const Caller& caller, const std::string&) -> absl::StatusOr<v1::GetMetricsResponse> {
    if (auto s = AdminOnly(caller, "GetMetrics"); !s.ok()) return s;
    v1::GetMetricsResponse out;
    out.set_prometheus_text(metrics_->RenderPrometheus(table_->Stats()));
    if (cluster_ != nullptr) out.mutable_prometheus_text()->append(cluster_->Metrics());
    return out;
  });
}
grpc::Status ControlService::ReplicateRegion(grpc::ServerContext* ctx, const v1::ReplicateRegionRequest* request,
                                             v1::ReplicateRegionResponse* response) {
  auto call = [&](const v1::ReplicateRegionRequest& r) -> absl::StatusOr<v1::ReplicateRegionResponse> {
    if (cluster_ == nullptr) {
      return absl::FailedPreconditionError("ReplicateRegion: this daemon is not a cluster member (no [cluster] url)");
    }
    return cluster_->Replicate(r);
  };
  return Serve("ReplicateRegion", ctx, response, SKV_KEYED(v1::ReplicateRegionRequest, call, (void)0));
}

}  // namespace sparsekv
