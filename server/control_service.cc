#include "server/control_service.h"

#include <chrono>

#include "common/config.h"
#include "common/grpc_status.h"

namespace sparsekv {

template <typename Response, typename Handler>
grpc::Status ControlService::Serve(const char* method, Response* response, Handler&& handler) {
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Response> result = handler();
  absl::Status status = result.status();
  if (result.ok()) *response = *std::move(result);
  metrics_->ObserveRpc(method, status.code(),
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return ToGrpcStatus(status);
}

grpc::Status ControlService::CreateRegion(grpc::ServerContext*, const v1::CreateRegionRequest* request,
                                          v1::OpenRegionResponse* response) {
  return Serve("CreateRegion", response, [&] { return table_->Create(*request); });
}
grpc::Status ControlService::OpenRegion(grpc::ServerContext*, const v1::OpenRegionRequest* request,
                                        v1::OpenRegionResponse* response) {
  return Serve("OpenRegion", response, [&] { return table_->Open(*request); });
}
grpc::Status ControlService::ExtendRegion(grpc::ServerContext*, const v1::ExtendRegionRequest* request,
                                          v1::ExtendRegionResponse* response) {
  return Serve("ExtendRegion", response, [&] { return table_->Extend(*request); });
}
grpc::Status ControlService::CommitRegion(grpc::ServerContext*, const v1::CommitRegionRequest* request,
                                          v1::CommitRegionResponse* response) {
  return Serve("CommitRegion", response, [&] { return table_->Commit(*request); });
}
grpc::Status ControlService::RenewLeases(grpc::ServerContext*, const v1::RenewLeasesRequest* request,
                                         v1::RenewLeasesResponse* response) {
  return Serve("RenewLeases", response, [&] {
    auto renewed = table_->Renew(*request);
    if (renewed.ok()) metrics_->AddClientStats(request->stats());
    return renewed;
  });
}
grpc::Status ControlService::ReleaseLeases(grpc::ServerContext*, const v1::ReleaseLeasesRequest* request,
                                           v1::ReleaseLeasesResponse* response) {
  return Serve("ReleaseLeases", response, [&]() -> absl::StatusOr<v1::ReleaseLeasesResponse> {
    if (auto s = table_->Release(*request); !s.ok()) return s;
    return v1::ReleaseLeasesResponse();
  });
}
grpc::Status ControlService::DeleteRegion(grpc::ServerContext*, const v1::DeleteRegionRequest* request,
                                          v1::DeleteRegionResponse* response) {
  return Serve("DeleteRegion", response, [&] { return table_->Delete(*request); });
}
grpc::Status ControlService::ListRegions(grpc::ServerContext*, const v1::ListRegionsRequest* request,
                                         v1::ListRegionsResponse* response) {
  return Serve("ListRegions", response, [&] { return table_->List(*request); });
}
grpc::Status ControlService::GetRegion(grpc::ServerContext*, const v1::GetRegionRequest* request,
                                       v1::RegionInfo* response) {
  return Serve("GetRegion", response, [&] { return table_->Get(*request); });
}
grpc::Status ControlService::Stats(grpc::ServerContext*, const v1::StatsRequest*,
                                   v1::StatsResponse* response) {
  return Serve("Stats", response, [&]() -> absl::StatusOr<v1::StatsResponse> {
    v1::StatsResponse out = table_->Stats();
    metrics_->FillClientTransports(3 * out.lease_ms(), &out);  // clients report at every renewal
    return out;
  });
}
grpc::Status ControlService::Evict(grpc::ServerContext*, const v1::EvictRequest* request,
                                   v1::EvictResponse* response) {
  return Serve("Evict", response, [&] { return table_->Evict(*request); });
}
grpc::Status ControlService::VerifyRegion(grpc::ServerContext*, const v1::VerifyRegionRequest* request,
                                          v1::VerifyRegionResponse* response) {
  return Serve("VerifyRegion", response, [&] { return table_->Verify(*request); });
}
grpc::Status ControlService::Drain(grpc::ServerContext*, const v1::DrainRequest* request,
                                   v1::DrainResponse* response) {
  return Serve("Drain", response, [&]() -> absl::StatusOr<v1::DrainResponse> {
    table_->SetDraining(request->enable());
    v1::DrainResponse out;
    out.set_draining(table_->draining());
    return out;
  });
}
grpc::Status ControlService::GetConfig(grpc::ServerContext*, const v1::GetConfigRequest*,
                                       v1::GetConfigResponse* response) {
  return Serve("GetConfig", response, [&]() -> absl::StatusOr<v1::GetConfigResponse> {
    v1::GetConfigResponse out;
    out.set_toml(DescribeConfig(table_->config()));
    return out;
  });
}
grpc::Status ControlService::GetMetrics(grpc::ServerContext*, const v1::GetMetricsRequest*,
                                        v1::GetMetricsResponse* response) {
  return Serve("GetMetrics", response, [&]() -> absl::StatusOr<v1::GetMetricsResponse> {
    v1::GetMetricsResponse out;
    out.set_prometheus_text(metrics_->RenderPrometheus(table_->Stats()));
    return out;
  });
}

}  // namespace sparsekv
