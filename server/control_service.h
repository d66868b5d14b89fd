// ControlService is the gRPC face of the RegionTable: it authenticates the caller (bearer token ->
// tenant or admin, server/auth.h), maps a tenant's keys into its namespace (TENANT/KEY) and back,
// converts requests and statuses at the edge and times every call for Metrics; every other rule
// lives in the table.
#ifndef SPARSEKV_SERVER_CONTROL_SERVICE_H_
#define SPARSEKV_SERVER_CONTROL_SERVICE_H_

#include <atomic>
#include <memory>

#include "server/auth.h"
#include "server/cluster_member.h"
#include "server/metrics.h"
#include "server/region_table.h"
#include "sparsekv/v1/control.grpc.pb.h"

namespace sparsekv {

class ControlService final : public v1::Control::Service {
 public:
  // `auth` null: no authentication, every caller is the admin of one implicit tenant.
  ControlService(RegionTable* table, Metrics* metrics, std::shared_ptr<const TenantDirectory> auth = nullptr)
      : table_(table), metrics_(metrics), auth_(std::move(auth)) {}
  // Swaps in a reloaded tenants file (SIGHUP): new tokens apply to the next call.
  void SetTenants(std::shared_ptr<const TenantDirectory> auth) { auth_.store(std::move(auth)); }
  std::shared_ptr<const TenantDirectory> tenants() const { return auth_.load(); }
  // Cluster membership (set before serving): creates claim their key in the directory, seals and
  // deletes are recorded there, ReplicateRegion works.
  void SetCluster(ClusterMember* cluster) { cluster_ = cluster; }

  grpc::Status CreateRegion(grpc::ServerContext*, const v1::CreateRegionRequest* request,
                            v1::OpenRegionResponse* response) override;
  grpc::Status OpenRegion(grpc::ServerContext*, const v1::OpenRegionRequest* request,
                          v1::OpenRegionResponse* response) override;
  grpc::Status ExtendRegion(grpc::ServerContext*, const v1::ExtendRegionRequest* request,
                            v1::ExtendRegionResponse* response) override;
  grpc::Status CommitRegion(grpc::ServerContext*, const v1::CommitRegionRequest* request,
                            v1::CommitRegionResponse* response) override;
  grpc::Status RenewLeases(grpc::ServerContext*, const v1::RenewLeasesRequest* request,
                           v1::RenewLeasesResponse* response) override;
  grpc::Status ReleaseLeases(grpc::ServerContext*, const v1::ReleaseLeasesRequest* request,
                             v1::ReleaseLeasesResponse* response) override;
  grpc::Status DeleteRegion(grpc::ServerContext*, const v1::DeleteRegionRequest* request,
                            v1::DeleteRegionResponse* response) override;
  grpc::Status ListRegions(grpc::ServerContext*, const v1::ListRegionsRequest* request,
                           v1::ListRegionsResponse* response) override;
  grpc::Status GetRegion(grpc::ServerContext*, const v1::GetRegionRequest* request,
                         v1::RegionInfo* response) override;
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;
  grpc::Status Evict(grpc::ServerContext*, const v1::EvictRequest* request,
                     v1::EvictResponse* response) override;
  grpc::Status VerifyRegion(grpc::ServerContext*, const v1::VerifyRegionRequest* request,
                            v1::VerifyRegionResponse* response) override;
  grpc::Status Drain(grpc::ServerContext*, const v1::DrainRequest* request,
                     v1::DrainResponse* response) override;
  grpc::Status GetConfig(grpc::ServerContext*, const v1::GetConfigRequest* request,
                         v1::GetConfigResponse* response) override;
  grpc::Status GetMetrics(grpc::ServerContext*, const v1::GetMetricsRequest* request,
                          v1::GetMetricsResponse* response) override;
  grpc::Status ReplicateRegion(grpc::ServerContext*, const v1::ReplicateRegionRequest* request,
                               v1::ReplicateRegionResponse* response) override;

 private:
  // Runs `handler`, stores its result in *response, records latency and status.
  template <typename Response, typename Handler>
  grpc::Status Serve(const char* method, grpc::ServerContext* context, Response* response, Handler&& handler);

  RegionTable* table_;
  Metrics* metrics_;
  ClusterMember* cluster_ = nullptr;
  std::atomic<std::shared_ptr<const TenantDirectory>> auth_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_CONTROL_SERVICE_H_
